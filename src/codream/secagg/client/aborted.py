"""Terminal client state: the client stopped, for a reason it also sent to the server (or that the
server sent to it).

Next states: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...exceptions import AbortReason
from .base import ClientState

__all__ = ["Aborted"]


@dataclass(frozen=True, slots=True)
class Aborted(ClientState):
    """Terminal: the client stopped, for `reason`. Accepts nothing (not even another abort)."""

    id: int
    reason: AbortReason
    detail: str = ""
    terminal: ClassVar[bool] = True

    @property
    def client_id(self) -> int:
        return self.id
