"""Terminal client state: every planned vector was unmasked.

Next states: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import ClientState

__all__ = ["Completed"]


@dataclass(frozen=True, slots=True)
class Completed(ClientState):
    """Terminal: every planned vector was unmasked. Accepts nothing."""

    id: int
    terminal: ClassVar[bool] = True

    @property
    def client_id(self) -> int:
        return self.id
