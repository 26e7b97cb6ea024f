"""Suite-wide settings.

The suite runs as two xdist workers on a 2-core machine; one torch thread per worker avoids
oversubscription (small models run many times faster) and keeps float results identical from run to run,
since reduction order depends on the thread count.
"""

import torch

torch.set_num_threads(1)
