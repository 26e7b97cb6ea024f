"""Terminal server state: the session stopped, with a reason every remaining client was sent.

Next states: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...exceptions import AbortReason
from .base import Rejection, ServerState, SessionSum

__all__ = ["ServerAborted"]


@dataclass(frozen=True, slots=True, eq=False)
class ServerAborted(ServerState):
    """Terminal: the session stopped for `reason`; `sums` holds the vectors finished before and
    `rejections` every client message refused along the way."""

    reason: AbortReason
    detail: str
    sums: tuple[SessionSum, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    terminal: ClassVar[bool] = True
