"""What every fastdl.nn module shares: how it is made from its torch twin."""

from __future__ import annotations

import copy

from torch import nn


# torch.nn type -> the fastdl.nn type that replaces it, filled as the classes are defined
# (each names its twin once, in ``torch_type``); fastdl.nn.convert reads it.
TWINS: dict[type[nn.Module], type[nn.Module]] = {}


class FastdlModule:
    """Mixin of fastdl.nn modules that subclass their torch.nn twin (``torch_type``; None for
    a fastdl-only variant that is no conversion target)."""

    torch_type: type[nn.Module] | None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        twin = cls.__dict__.get("torch_type")
        if twin is None:
            return
        if not issubclass(cls, twin):
            raise TypeError(f"{cls.__name__} must subclass its torch twin {twin.__name__}")
        if twin in TWINS:
            raise TypeError(
                f"{twin.__name__} has two fastdl twins: {TWINS[twin].__name__}, {cls.__name__}"
            )
        TWINS[twin] = cls

    @classmethod
    def from_torch(cls, module: nn.Module) -> nn.Module:
        """A fastdl module that is ``module`` in all but its class: the same parameter and
        buffer tensors (so optimizers keep working), hyper-parameters, training mode and
        hooks. The containers (parameter, buffer and hook dicts) are copies, so later
        changes to one module do not leak into the other."""
        if type(module) is not cls.torch_type:
            raise TypeError(
                f"{cls.__name__}.from_torch expects a {cls.torch_type.__name__}, "
                f"got {type(module).__name__}"
            )
        new = cls.__new__(cls)
        new.__dict__.update(
            {
                key: copy.copy(value) if isinstance(value, (dict, set, list)) else value
                for key, value in vars(module).items()
            }
        )
        return new
