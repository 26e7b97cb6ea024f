"""Fixtures of the secure-aggregation tests; the shared doubles live in tests/fakes.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secagg_harness import signed_config  # noqa: E402

from fakes import Harness, random_words  # noqa: E402


def make_config(
    n: int = 5, t: int = 3, lengths: tuple[int, ...] = (6, 4), *, malicious: bool = False, bits: int = 32
):
    """A complete-graph config and, in malicious mode, the clients' signers."""
    return signed_config(n, t, round_index=7, lengths=lengths, malicious=malicious, bits=bits)


@pytest.fixture
def config():
    return make_config()[0]


@pytest.fixture
def inputs(config):
    rng = np.random.default_rng(1)
    return [
        {cid: random_words(rng, n, config.bits) for cid in config.client_ids} for n in config.vector_lengths
    ]


@pytest.fixture
def at_unmask(config, inputs):
    """A session of 5 clients (t = 3) stopped with every client holding its unmask request of vector 0."""
    h = Harness(config)
    h.setup()
    requests = h.to_unmask(inputs[0])
    return h, requests
