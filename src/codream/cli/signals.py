"""SIGTERM and SIGHUP stop a command the way Ctrl-C does, so that its clean-up runs.

Python's default for SIGTERM and SIGHUP ends the process at once: no ``finally`` block, no context
manager's exit. A Flower run then leaves its SuperLink, SuperNodes and their children running (they
live in their own sessions, so the signal never reaches them). Inside `stop_signals` the first such
signal raises `Terminated`, a `KeyboardInterrupt`, wherever the main thread is; every clean-up path that
handles Ctrl-C then handles it too. Later signals are logged and ignored, so a second SIGTERM (a
scheduler that insists) cannot cut the clean-up short; SIGKILL still ends everything.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["STOP_SIGNALS", "Terminated", "stop_signals"]

log = logging.getLogger(__name__)

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None
)


class Terminated(KeyboardInterrupt):
    """The process received a stop signal (SIGTERM or SIGHUP); `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's status for a process ended by this signal: 128 + its number."""
        return 128 + self.signum


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Terminated` for the duration of the block (main thread only).

    Outside the main thread, where Python cannot install handlers, the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            log.warning("received %s while stopping; still cleaning up", signal.Signals(signum).name)
            return
        stopping = True
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
