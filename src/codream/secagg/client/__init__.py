"""Client side of secure aggregation: one state class per round (see protocols/secagg.md).

``state, message = start_client(config, client_id)`` begins a session; then ``state.handle(message)``
for each message from the server and ``state.submit(words)`` for each vector's input, each returning
the next state and the message to send (or None).
"""

from .aborted import Aborted
from .base import ClientState
from .completed import Completed
from .r0_advertise_keys import AdvertiseKeysState, start_client
from .r1_share_keys import ShareKeysState
from .r2_masked_input import MaskedInputState
from .r3_exclude import UnmaskedLastState, UnmaskedState
from .r3_unmask import ConsistencyCheckState, UnmaskState

__all__ = [
    "Aborted",
    "AdvertiseKeysState",
    "ClientState",
    "Completed",
    "ConsistencyCheckState",
    "MaskedInputState",
    "ShareKeysState",
    "UnmaskState",
    "UnmaskedLastState",
    "UnmaskedState",
    "start_client",
]
