"""Server side of secure aggregation: one state class per round (see protocols/secagg.md).

``state = start_server(config)``; then ``state = state.handle(message)`` for each client message of
the round and ``state, outgoing = state.close()`` at the round's deadline. `ServerCompleted.sums` and
`ServerMaskedInput.sums` hold the unmasked vectors.
"""

from .aborted import ServerAborted
from .base import Rejection, ServerSession, ServerState, SessionSum
from .completed import ServerCompleted
from .r0_advertise_keys import ServerAdvertiseKeys, start_server
from .r1_share_keys import ServerShareKeys
from .r2_masked_input import ServerMaskedInput
from .r3_exclude import ServerExclusion
from .r3_unmask import ServerConsistencyCheck, ServerUnmask

__all__ = [
    "Rejection",
    "ServerAborted",
    "ServerAdvertiseKeys",
    "ServerCompleted",
    "ServerConsistencyCheck",
    "ServerExclusion",
    "ServerMaskedInput",
    "ServerSession",
    "ServerShareKeys",
    "ServerState",
    "ServerUnmask",
    "SessionSum",
    "start_server",
]
