"""The one seam through which every client-to-server value passes, in two halves.

Everything a client releases in a round (the dream gradient at every global step, the soft labels,
the class weights) is a vector whose *sum* over clients is all the server needs. The learning code
asks for sums through this package only, so `plain`, `secure` and `secure+dp` are interchangeable and
the learning layer never imports the protocol.

- `ClientSeam` (client half): lives with its client, built from the client's own `ClientPolicy`;
  admits or refuses each round's plan and turns each planned vector into the words that leave it
  (bound -> encode -> its own noise share; masking is its secure-aggregation state's).
- `ServerSeam` (server half): plans rounds and decodes sums.
- `LocalAggregator`: both halves in one process, for the in-process engine, benchmarks and tests.

`secagg` and `privacy` stand under the seam and import neither it nor each other.
"""

from .client import COUNT_WORDS, ClientSeam, LocalStats, wire_lengths
from .local import AggregationRound, Aggregator, LocalAggregator, create_aggregator
from .plan import (
    AggregateResult,
    DPStats,
    Mode,
    ReleaseKind,
    RoundPlan,
    RoundReport,
    SecureStats,
    VectorSpec,
    release_context,
)
from .policy import ClientPolicy, DPPolicy, required_threshold
from .projected import ProjectedReleases
from .server import DEFAULT_DP_BITS, ServerSeam

__all__ = [
    "COUNT_WORDS",
    "DEFAULT_DP_BITS",
    "AggregateResult",
    "AggregationRound",
    "Aggregator",
    "ClientPolicy",
    "ClientSeam",
    "DPPolicy",
    "DPStats",
    "LocalAggregator",
    "LocalStats",
    "Mode",
    "ProjectedReleases",
    "ReleaseKind",
    "RoundPlan",
    "RoundReport",
    "SecureStats",
    "ServerSeam",
    "VectorSpec",
    "create_aggregator",
    "required_threshold",
    "release_context",
    "wire_lengths",
]
