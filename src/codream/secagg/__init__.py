"""Secure aggregation: the server learns the sum of the clients' vectors and nothing else.

Bonawitz et al. 2017 double masking, with the sparse neighbour graph of SecAgg+ (Bell et al. 2020)
as an option, written as pure state machines (`client`, `server`) over typed wire `messages`.
`runner.InProcessSession` drives a whole session in one process; `aggregator.SecureAggregator` plugs
it into the aggregation seam as ``"secure"``. The low-level primitives live in `codream.crypto`.
The protocol is specified in protocols/secagg.md.
"""

from .config import GraphKind, SessionConfig
from .runner import (
    Dropout,
    DropoutSchedule,
    InProcessSession,
    SessionResult,
    SessionStats,
    SessionSum,
    Stage,
    provision_signers,
    run_session,
)

__all__ = [
    "ClientNoise",
    "Dropout",
    "DropoutSchedule",
    "GraphKind",
    "InProcessSession",
    "SecureAggregator",
    "SessionConfig",
    "SessionResult",
    "SessionStats",
    "SessionSum",
    "Stage",
    "provision_signers",
    "run_session",
]


def __getattr__(name: str):
    # The aggregator registers itself with the seam on import; load it only when asked for.
    if name in ("SecureAggregator", "ClientNoise"):
        from . import aggregator

        return getattr(aggregator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
