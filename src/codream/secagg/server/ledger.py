"""An insert-only mapping that successive server states extend without copying.

A server round records one client message at a time, and each `handle` returns a new frozen state.
Copying the round's dict into every new state would cost O(n) per message, O(n^2) per round.
`Ledger.with_item` instead appends to storage it shares with the ledger it was called on and
returns a longer view of it; every view keeps seeing exactly the entries it had (each entry
remembers its position, and a view shows the entries before its length), so a state never
changes once made. Extending a view that is not the longest of its storage (a state handled
twice) copies its own entries first: correct always, O(1) on the usual path.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Ledger"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Ledger(Mapping[K, V], Generic[K, V]):
    """Immutable view of the first `len(self)` entries of a shared, append-only store."""

    __slots__ = ("_entries", "_order", "_size")

    def __init__(self) -> None:
        self._entries: dict[K, tuple[int, V]] = {}
        self._order: list[K] = []
        self._size = 0

    @classmethod
    def _view(cls, entries: dict[K, tuple[int, V]], order: list[K], size: int) -> Ledger[K, V]:
        view = cls.__new__(cls)
        view._entries, view._order, view._size = entries, order, size
        return view

    def with_item(self, key: K, value: V) -> Ledger[K, V]:
        """This ledger with `key` -> `value` added.

        Raises:
            KeyError: `key` is already in this ledger (entries are never replaced).
        """
        if key in self:
            raise KeyError(f"{key!r} is already recorded")
        if self._size == len(self._order) and key not in self._entries:
            entries, order = self._entries, self._order
        else:  # another view already extended the shared store: branch off with a copy
            order = self._order[: self._size]
            entries = {k: self._entries[k] for k in order}
        entries[key] = (len(order), value)
        order.append(key)
        return self._view(entries, order, len(order))

    def __getitem__(self, key: K) -> V:
        entry = self._entries.get(key)
        if entry is None or entry[0] >= self._size:
            raise KeyError(key)
        return entry[1]

    def __contains__(self, key: object) -> bool:
        entry = self._entries.get(key)  # type: ignore[call-overload]
        return entry is not None and entry[0] < self._size

    def __iter__(self) -> Iterator[K]:
        """Keys in the order they were added."""
        return iter(self._order[: self._size])

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"Ledger({len(self)} entries)"
