"""Suite-wide settings.

The suite runs as two xdist workers on a 2-core machine; one torch thread per worker avoids
oversubscription (small models run many times faster) and keeps float results identical from run to run,
since reduction order depends on the thread count.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    """The embedded data set, loaded once per test module."""
    from codream.data import load_dataset

    return load_dataset("digits", seed=0)
