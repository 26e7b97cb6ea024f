"""The CLI tests' fixture: `fake_engine` runs `codream run` on the stand-in of stand_in.py."""

from __future__ import annotations

import pytest
from stand_in import FakeFederation

from codream.cli import run as run_module


@pytest.fixture
def fake_engine(monkeypatch):
    # execute_run takes the engine factory as an argument; give it the stand-in where the command calls it
    original = run_module.execute_run

    def patched(rc, **kwargs):
        kwargs.setdefault("federation_factory", FakeFederation)
        return original(rc, **kwargs)

    monkeypatch.setattr(run_module, "execute_run", patched)
