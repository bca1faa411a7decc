"""fastdl.nn.convert: swap the supported torch.nn layers of a model for fastdl's, in place."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Union

from torch import nn

# The modules register their torch twins (fastdl.nn._base.TWINS) as they are defined.
from . import attention, conv, norm, pooling, rnn  # noqa: F401
from ._base import TWINS

# torch.nn type -> fastdl.nn type.
CONVERSIONS: dict[type[nn.Module], type] = TWINS

TypeFilter = Optional[Iterable[Union[str, type]]]


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` did: ``swapped`` holds (qualified name, torch type name,
    fastdl type name) per replaced layer; ``skipped`` holds (name, type name, reason)."""

    swapped: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.swapped)

    def __str__(self) -> str:
        lines = [f"fastdl.nn.convert: swapped {len(self.swapped)} layer(s)"]
        lines += [
            f"  {name or '<root>'}: {old} -> fastdl.nn.{new}" for name, old, new in self.swapped
        ]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}:")
            lines += [f"  {name}: {kind} ({why})" for name, kind, why in self.skipped]
        return "\n".join(lines)


def _names(types: TypeFilter) -> Optional[set[str]]:
    if types is None:
        return None
    if isinstance(types, (str, type)):
        types = [types]
    return {t if isinstance(t, str) else t.__name__ for t in types}


def convert(
    model: nn.Module, include: TypeFilter = None, exclude: TypeFilter = None
) -> ConversionReport:
    """Replace every supported torch.nn layer in ``model`` by its fastdl.nn twin, in place.

    The new layers hold the very same parameter and buffer tensors (so an optimizer built
    before the call still updates them) and keep the training mode. Only exact torch types
    are swapped (a user subclass may have changed ``forward``); those are reported as skipped.

    Args:
        model: the model to change. If ``model`` itself is a supported layer it cannot be
            replaced in place: convert its parent, or use ``type.from_torch(model)``.
        include: only swap these layer types (classes or class names, e.g. ``["LayerNorm"]``).
        exclude: never swap these layer types.

    Returns:
        A :class:`ConversionReport`; ``print`` it to see what changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    include_names, exclude_names = _names(include), _names(exclude)
    known = {t.__name__ for t in CONVERSIONS}
    for names, arg in ((include_names, "include"), (exclude_names, "exclude")):
        unknown = (names or set()) - known
        if unknown:
            raise ValueError(
                f"convert: {arg} names layer types fastdl cannot convert: "
                f"{sorted(unknown)}; supported: {sorted(known)}"
            )
    report = ConversionReport()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            kind = type(child)
            target = CONVERSIONS.get(kind)
            if target is None:
                for torch_type in CONVERSIONS:
                    if isinstance(child, torch_type) and not isinstance(
                        child, tuple(CONVERSIONS.values())
                    ):
                        report.skipped.append(
                            (name, kind.__name__, f"subclass of {torch_type.__name__}")
                        )
                continue
            if include_names is not None and kind.__name__ not in include_names:
                report.skipped.append((name, kind.__name__, "not in include"))
                continue
            if exclude_names is not None and kind.__name__ in exclude_names:
                report.skipped.append((name, kind.__name__, "in exclude"))
                continue
            setattr(parent, child_name, target.from_torch(child))
            report.swapped.append((name, kind.__name__, target.__name__))
    return report
