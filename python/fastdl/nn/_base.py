"""What every fastdl.nn module shares: how it is made from its torch twin."""

from __future__ import annotations

import copy

from torch import nn


class FastdlModule:
    """Mixin of fastdl.nn modules that subclass their torch.nn twin (``torch_type``)."""

    torch_type: type[nn.Module]

    @classmethod
    def from_torch(cls, module: nn.Module) -> nn.Module:
        """A fastdl module that is ``module`` in all but its class: the same parameter and
        buffer tensors (so optimizers keep working), hyper-parameters, training mode and
        hooks. The containers (parameter, buffer and hook dicts) are copies, so later
        changes to one module do not leak into the other."""
        if type(module) is not cls.torch_type:
            raise TypeError(f"{cls.__name__}.from_torch expects a {cls.torch_type.__name__}, "
                            f"got {type(module).__name__}")
        new = cls.__new__(cls)
        new.__dict__.update({key: copy.copy(value) if isinstance(value, (dict, set, list)) else value
                             for key, value in vars(module).items()})
        return new
