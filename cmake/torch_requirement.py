"""scikit-build-core metadata plugin: the package's torch requirement is the torch release it
is built against (``torch==X.Y.Z``, any local build label such as ``+cu130``).

libfastdl links libtorch's C++ API, which changes between torch releases, so a wheel built
against one release does not load with another. pyproject.toml names this module as the
provider of ``dependencies``; torch is importable at build time (a build requirement).
"""

from __future__ import annotations


def dynamic_metadata(field, settings=None, project=None):
    """``dependencies``: ``["torch==<the installed torch's release>"]``."""
    if field != "dependencies":
        raise ValueError(f"torch_requirement provides only 'dependencies', not {field!r}")
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}"]


def get_requires_for_dynamic_metadata(settings=None):
    return ["torch"]
