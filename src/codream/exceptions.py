"""Every exception codream raises on purpose. Small classes; callers branch on type and reason."""

from __future__ import annotations

import enum


class CodreamError(Exception):
    """Base class of all codream errors."""


class ConfigError(CodreamError, ValueError):
    """A configuration value is invalid; the message says which and what would be valid."""


class DataError(CodreamError):
    """A data set is missing or malformed; the message names the file and how to get it."""


class AbortReason(enum.Enum):
    """Why a secure-aggregation participant aborted. Stable codes, sent in abort messages."""

    TOO_FEW_PEERS = "too_few_peers"
    DUPLICATE_KEY = "duplicate_key"
    INVALID_PUBLIC_KEY = "invalid_public_key"
    INVALID_SIGNATURE = "invalid_signature"
    SESSION_MISMATCH = "session_mismatch"
    UNKNOWN_PEER = "unknown_peer"
    REPEATED_PEER = "repeated_peer"
    OVERLAPPING_SETS = "overlapping_sets"
    INCONSISTENT_VIEW = "inconsistent_view"
    DECRYPTION_FAILED = "decryption_failed"
    INVALID_SHARE = "invalid_share"
    KEY_MISMATCH = "key_mismatch"
    MALFORMED_MESSAGE = "malformed_message"
    UNEXPECTED_VECTOR = "unexpected_vector"
    FORBIDDEN_REQUEST = "forbidden_request"
    INPUT_OUT_OF_RANGE = "input_out_of_range"
    TIMEOUT = "timeout"


class ProtocolAbort(CodreamError):
    """A protocol participant refuses to go on; `reason` is machine-readable, `detail` is for people."""

    def __init__(self, reason: AbortReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class UnexpectedMessage(CodreamError):
    """A message arrived that the current state does not accept; the state is left unchanged."""


class InvalidMessage(CodreamError):
    """Bytes that do not decode to a well-formed message (version, length, type)."""


class InvalidShare(CodreamError):
    """A secret share, or the secret rebuilt from shares, fails verification."""


class DecryptionError(CodreamError):
    """Any failure to decrypt or authenticate; one type so that failures leak nothing."""


class PrivacyBudgetExceeded(CodreamError):
    """The next release would spend more privacy budget than the target allows."""


class EncodingOverflow(CodreamError):
    """A value does not fit the fixed-point encoding and the caller asked for no saturation."""


class TrainingDiverged(CodreamError):
    """A loss became NaN or infinite during training; the message names the run and the learning rate."""


class PolicyRefusal(CodreamError):
    """A client refuses a round its own policy does not allow; it releases nothing for that round."""
