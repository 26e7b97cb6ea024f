"""Secure aggregation: the server learns the sum of the clients' vectors and nothing else.

Bonawitz et al. 2017 double masking, with the sparse neighbour graph of SecAgg+ (Bell et al. 2020)
as an option, written as pure state machines (`client`, `server`) over typed wire `messages`.
`runner.InProcessSession` drives a whole session in one process; the aggregation seam
(`codream.aggregation`) stands on top of it. The low-level primitives live in `codream.crypto`.
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
    "Dropout",
    "DropoutSchedule",
    "GraphKind",
    "InProcessSession",
    "SessionConfig",
    "SessionResult",
    "SessionStats",
    "SessionSum",
    "Stage",
    "provision_signers",
    "run_session",
]
