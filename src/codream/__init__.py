"""codream: federated learning by co-optimised dreams, summed under secure aggregation and DP.

Clients with different model architectures never share weights. They jointly optimise a batch of
synthetic inputs, agree on soft labels for them and distil that knowledge into their own models.
Everything a client releases is a vector the server only needs to sum; `codream.aggregation` is the one
seam through which every such vector passes (plain mean, secure sum, or secure sum with DP).
"""

__version__ = "0.1.0"
