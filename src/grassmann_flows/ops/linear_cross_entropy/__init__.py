"""Cross-entropy of the tied LM head, CE(h W^T, y), in two implementations.

    naive.py    linear_cross_entropy_reference  logits in memory, then F.cross_entropy (the definition)
    chunked.py  linear_cross_entropy            a few rows at a time, gradients in the forward pass

Both take hidden (N, d), weight (V, d), targets (N,) and return the mean (or summed)
cross-entropy over the targets that are not `ignore_index`.
"""

from .chunked import linear_cross_entropy
from .naive import linear_cross_entropy_reference

__all__ = ["linear_cross_entropy", "linear_cross_entropy_reference"]
