"""Round 2, client side: mask this client's input for vector j and send it.

The input arrives through `submit` (the learning code computes vector j only after the sum of
vector j-1 is known), not from the server; the server sends nothing in this round. With it comes
the context the caller computed it from (e.g. a hash of the dreams and targets it received): the
pairwise masks are keyed with it and the consistency signature covers it, so a server that sends
different clients different broadcasts gets either refusals or a sum that is still masked.

Next states: UnmaskState (same vector), Aborted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...exceptions import ConfigError
from ..keys import context_digest, mask_salt, masked_words
from ..messages import MaskedInput
from .base import ClientContext, ClientSession, ClientState, Transition

__all__ = ["MaskedInputState"]


@dataclass(frozen=True, slots=True, eq=False)
class MaskedInputState(ClientState):
    """Waiting for this client's encoded input of vector `vector`."""

    session: ClientSession
    vector: int

    @property
    def client_id(self) -> int:
        return self.session.ctx.client_id

    def _context(self) -> ClientContext:
        return self.session.ctx

    def submit(self, words: np.ndarray, context: bytes = b"") -> Transition:
        """Mask `words` (this client's encoded vector j) and move to the unmask round.

        Args:
            words: uint32 or uint64 array of `config.vector_lengths[j]` ring elements, each < 2^bits.
            context: what this client computed vector j from, as bytes (e.g. SHA-256 of the
                dreams, targets and plan the server sent it); b"" when there is none. Every
                client of a session must pass the same bytes for the same vector.

        Returns:
            The unmask state for this vector and the `MaskedInput` message.

        Raises:
            ConfigError: `words` has the wrong dtype, shape or range; the state is unchanged.
        """
        from .r3_unmask import UnmaskState

        config, j = self.session.ctx.config, self.vector
        words = np.asarray(words)
        if words.dtype not in (np.uint32, np.uint64) or words.shape != (config.vector_lengths[j],):
            raise ConfigError(
                f"vector {j}: expected uint32 or uint64 words of shape ({config.vector_lengths[j]},), "
                f"got {words.dtype} {words.shape}"
            )
        if config.bits < 64 and words.size and int(words.max()) >> config.bits:
            raise ConfigError(f"vector {j}: a word is outside [0, 2^{config.bits})")
        digest = context_digest(context)
        return self._guarded(self._mask, words, digest, UnmaskState)

    def _mask(self, words: np.ndarray, digest: bytes, next_state: type) -> Transition:
        s = self.session
        y = masked_words(
            words,
            own_id=s.ctx.client_id,
            seed=s.secrets.seeds[self.vector],
            shared=s.shared[self.vector],
            session=s.session_id,
            vector=self.vector,
            bits=s.ctx.config.bits,
            salt=mask_salt(s.session_id, digest),
        )
        message = MaskedInput(s.ctx.client_id, self.vector, s.ctx.config.bits, y, digest)
        return next_state(s, self.vector, digest), message
