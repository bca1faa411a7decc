"""Convolutional models built from fastdl's layers: LeNet-5 and a ResNet basic block.

Both are built from :mod:`fastdl.nn` layers (``Conv2d``, ``AvgPool2d``/``MaxPool2d``,
``BatchNorm2d``); what fastdl has no kernel for (``Linear``, the activations, the residual sum)
is plain torch. ``torch_twin()`` returns the same architecture built from the matching
:mod:`torch.nn` layers, with a copy of the weights, buffers and training mode, so the two can
be compared step by step. The state-dict keys are identical, so ``load_state_dict`` works both
ways (the fastdl layers subclass their torch twins).

Construction takes ``backend="fastdl"`` (default) or ``backend="torch"``; ``torch_twin()`` is
``backend="torch"`` plus the copy of the state.
"""

from __future__ import annotations

from torch import Tensor, nn

from .. import nn as fnn
from .._args import positive_int

__all__ = ["LeNet5", "ResNetBlock"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
POOLINGS = ("avg", "max")
BACKENDS = ("fastdl", "torch")


def _check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _layer(backend: str, name: str) -> type[nn.Module]:
    """The layer class ``name`` ("Conv2d", "BatchNorm2d", ...) of ``backend``. fastdl's is
    looked up when a model is built, not when this module is imported, so ``fastdl.models``
    imports even in a build that lacks one of them."""
    if backend == "torch":
        return getattr(nn, name)
    layer = getattr(fnn, name, None)
    if layer is None:
        raise NotImplementedError(
            f"fastdl.nn.{name} is not available in this build of fastdl; "
            f"use backend='torch' for the pure-torch model"
        )
    return layer


class _TwinMixin:
    """``torch_twin()``: the same model built from torch.nn layers with a copy of the state."""

    _config: dict

    def torch_twin(self) -> nn.Module:
        """The same architecture built from :mod:`torch.nn` layers, holding a copy of this
        model's parameters and buffers (same dtype and device) and in the same training mode.
        Changing one afterwards does not change the other."""
        twin = type(self)(**self._config, backend="torch")
        state = self.state_dict()
        # load_state_dict copies values into the twin's own tensors (casting them), so give the
        # twin our floating dtype and device first.
        ref = next((t for t in state.values() if t.is_floating_point()), None)
        if ref is not None:
            twin.to(device=ref.device, dtype=ref.dtype)
        twin.load_state_dict(state)
        twin.train(self.training)
        return twin


class LeNet5(_TwinMixin, nn.Module):
    """LeNet-5 (LeCun et al., 1998) on ``(N, in_channels, 32, 32)`` images, the course's table:

    ======================  =================  ===========
    layer                   output             parameters
    ======================  =================  ===========
    Conv2d 5x5, 6           (6, 28, 28)        156 (1 ch)
    activation, pool 2x2    (6, 14, 14)
    Conv2d 5x5, 16          (16, 10, 10)       2 416
    activation, pool 2x2    (16, 5, 5)
    flatten                 400
    Linear 120, activation  120                48 120
    Linear 84, activation   84                 10 164
    Linear num_classes      num_classes        850 (10)
    ======================  =================  ===========

    61 706 parameters for one input channel and 10 classes. Every convolution connects to all
    input channels (no sparse C3 table), the output is the logits (no softmax).

    Args:
        in_channels: channels of the input images.
        num_classes: size of the output (logits).
        activation: ``"tanh"`` (the original) or ``"relu"``, after each conv and hidden Linear.
        pooling: ``"avg"`` (the original subsampling) or ``"max"``; 2x2, stride 2.
        backend: ``"fastdl"`` (fastdl.nn.Conv2d and pooling) or ``"torch"`` (torch.nn's).

    ``features`` holds the conv/pool part, ``classifier`` the flatten and dense part.
    """

    input_size = (32, 32)

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        activation: str = "tanh",
        pooling: str = "avg",
        *,
        backend: str = "fastdl",
    ):
        super().__init__()
        positive_int(in_channels, "in_channels")
        positive_int(num_classes, "num_classes")
        _check_choice(activation, "activation", tuple(ACTIVATIONS))
        _check_choice(pooling, "pooling", POOLINGS)
        _check_choice(backend, "backend", BACKENDS)
        self._config = dict(
            in_channels=in_channels, num_classes=num_classes, activation=activation, pooling=pooling
        )
        self.in_channels, self.num_classes = in_channels, num_classes
        self.activation, self.pooling, self.backend = activation, pooling, backend

        Conv2d = _layer(backend, "Conv2d")
        Pool = _layer(backend, "AvgPool2d" if pooling == "avg" else "MaxPool2d")
        Act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            Conv2d(in_channels, 6, kernel_size=5),
            Act(),
            Pool(kernel_size=2, stride=2),
            Conv2d(6, 16, kernel_size=5),
            Act(),
            Pool(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            Act(),
            nn.Linear(120, 84),
            Act(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"LeNet5 expects input of shape (N, {self.in_channels}, 32, 32), "
                f"got {tuple(x.shape)}"
            )
        return self.classifier(self.features(x))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
            f"activation={self.activation!r}, pooling={self.pooling!r}, "
            f"backend={self.backend!r}"
        )


class ResNetBlock(_TwinMixin, nn.Module):
    """The ResNet basic block (He et al., 2016)::

        out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))

    ``conv1`` is 3x3 with ``stride`` (the block's downsampling), ``conv2`` 3x3 stride 1, both
    padding 1 and without bias (the BatchNorm that follows has one). ``shortcut`` is the
    identity when ``stride == 1`` and ``in_channels == out_channels``, else a 1x1 conv with
    ``stride`` (no bias) followed by BatchNorm2d. Input ``(N, in_channels, H, W)``, output
    ``(N, out_channels, ceil(H / stride), ceil(W / stride))``.

    Args:
        in_channels, out_channels: channels in and out.
        stride: stride of the first conv and of the projection shortcut.
        backend: ``"fastdl"`` (fastdl.nn.Conv2d and BatchNorm2d) or ``"torch"``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, *, backend: str = "fastdl"
    ):
        super().__init__()
        positive_int(in_channels, "in_channels")
        positive_int(out_channels, "out_channels")
        positive_int(stride, "stride")
        _check_choice(backend, "backend", BACKENDS)
        self._config = dict(in_channels=in_channels, out_channels=out_channels, stride=stride)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.backend = backend

        Conv2d = _layer(backend, "Conv2d")
        BatchNorm2d = _layer(backend, "BatchNorm2d")
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"stride={self.stride}, backend={self.backend!r}"
        )
