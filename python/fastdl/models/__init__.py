"""Models built from fastdl's layers.

- :class:`DeepSets`: ρ(pool_i φ(x_i)) with sum/mean/max/median pooling and masks.
- :class:`HistNetQ`: quantification (class prevalences of a bag) with one differentiable
  histogram per feature as the pooling.
"""

from .sets import DeepSets, HistNetQ

__all__ = ["DeepSets", "HistNetQ"]
