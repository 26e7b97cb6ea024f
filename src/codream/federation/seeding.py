"""The learning loop's seeded random streams: one per purpose and party, the same in every engine.

Both engines build a client's model, trainer, buffer sampler and the server's dreams from these
streams, so the same seed gives the same federation wherever it runs. Nothing privacy rests on is
drawn from them (keys, masks, DP noise and DP sampling coins come from the OS).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["stream"]


def stream(*seed_parts: int) -> torch.Generator:
    """A torch generator seeded from a tuple of ints (independent streams per purpose and client)."""
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)
