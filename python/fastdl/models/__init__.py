"""Models built from fastdl's layers.

- :class:`DeepSets`: ρ(pool_i φ(x_i)) with sum/mean/max/median pooling and masks.
- :class:`HistNetQ`: quantification (class prevalences of a bag) with one differentiable
  histogram per feature as the pooling.
- :class:`SetTransformer`: ISAB encoder, PMA + SAB decoder on fused induced attention.
- :class:`LeNet5`: LeNet-5 on 32x32 images (2 conv + 2 pool + 3 dense).
- :class:`ResNetBlock`: the ResNet basic block (two 3x3 conv + BatchNorm, residual shortcut).
"""

from .cnn import LeNet5, ResNetBlock
from .sets import DeepSets, HistNetQ, SetTransformer

__all__ = ["DeepSets", "HistNetQ", "LeNet5", "ResNetBlock", "SetTransformer"]
