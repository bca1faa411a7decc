"""What every fastdl.nn module shares: how it is made from its torch twin."""

from __future__ import annotations

import inspect

import torch
from torch import nn


class FastdlModule:
    """Mixin of fastdl.nn modules that subclass their torch.nn twin (``torch_type``)."""

    torch_type: type[nn.Module]

    @classmethod
    def from_torch(cls, module: nn.Module) -> nn.Module:
        """A fastdl module holding ``module``'s parameters and buffers (the same tensor
        objects, so optimizers keep working) and its training mode."""
        if type(module) is not cls.torch_type:
            raise TypeError(f"{cls.__name__}.from_torch expects a {cls.torch_type.__name__}, "
                            f"got {type(module).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        # Public attributes (hyper-parameters such as eps, momentum, normalized_shape).
        for key, value in vars(module).items():
            if not key.startswith("_") or key in ("_version",):
                setattr(new, key, value)
        for name, param in module._parameters.items():
            new._parameters[name] = param
        for name, buf in module._buffers.items():
            new._buffers[name] = buf
        new._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
        new.train(module.training)
        return new
