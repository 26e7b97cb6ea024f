"""Terminal server state: every planned vector was summed.

Next states: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Rejection, ServerState, SessionSum

__all__ = ["ServerCompleted"]


@dataclass(frozen=True, slots=True, eq=False)
class ServerCompleted(ServerState):
    """Terminal: every planned vector was summed; `rejections` lists every client message refused."""

    sums: tuple[SessionSum, ...]
    rejections: tuple[Rejection, ...] = ()
    terminal: ClassVar[bool] = True
