"""The LeQua 2022 / 2024 data layout, read from a local folder (nothing is downloaded).

The LeQua labs (Learning to Quantify, CLEF 2022 and 2024) publish every vector task (2022:
T1A, T1B; 2024: T1, T2, T3, T4) as CSV files with a header row, in this layout::

    <root>/<task>/public/
        training_data.txt          label,0,1,...,d-1    labelled training vectors
        training_samples/<id>.txt  + training_prevalences.txt   (2024 T3: labelled bags instead)
        label_map.txt              "<name> <code>" per line (optional)
        dev_samples/<id>.txt       0,1,...,d-1          one bag per file, no labels
        dev_prevalences.txt        id,0,1,...,n-1       the true prevalences of each bag
        test_samples/<id>.txt      as dev_samples
        test_prevalences.txt       as dev_prevalences (published after each lab)

:func:`load_lequa` reads it into QuaPy objects, as QuaPy's ``fetch_lequa2022`` does but from
a folder the user already has and without QuaPy's checks of the official sample counts (so
a small extract, or a folder made in the same layout, loads too)::

    train, dev, test, names = load_lequa("~/data/lequa2022", "T1B")
    model = HistNetQuantifier(bag_size=1000).fit(*train.Xy)
    qp.evaluation.evaluate(model, test, "mrae")     # the published protocol
"""

from __future__ import annotations

import os
from typing import Iterator, NamedTuple, Optional

import numpy as np

from ._base import AbstractProtocol, LabelledCollection

__all__ = ["LeQuaData", "SamplesFromFolder", "load_lequa", "read_prevalences", "read_vectors"]

#: The tolerance LeQua's format checker allows on a prevalence vector's sum.
SUM_TOLERANCE = 1e-3


def read_vectors(path: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """One LeQua vector file: ``(X (n, d) float32, labels (n,) int64 or None)``. Labelled
    files have a first column named ``label``."""
    with open(path) as f:
        header = f.readline().strip().split(",")
    labelled = header[0].strip() == "label"
    names = header[1:] if labelled else header
    if any(not name.strip().lstrip("-").isdigit() for name in names):
        raise ValueError(
            f"{path} is not a LeQua vector file (header {header[:3]}...): the "
            f"raw-text tasks (2022 T2A, T2B) must be vectorised first"
        )
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if table.shape[0] == 0:
        raise ValueError(f"{path} holds no example")
    if labelled:
        return table[:, 1:].astype(np.float32), table[:, 0].astype(np.int64)
    return table.astype(np.float32), None


def read_prevalences(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A LeQua prevalence file (``id,0,...,n-1``): ``(ids (m,) int64, prevalences (m, n))``,
    checked to be on the simplex as LeQua's format checker does."""
    with open(path) as f:
        header = [h.strip() for h in f.readline().strip().split(",")]
    if (
        header[0] != "id"
        or header[1:] != [str(i) for i in range(len(header) - 1)]
        or len(header) < 3
    ):
        raise ValueError(
            f"{path}: the header must be 'id,0,1,...,n-1' with n >= 2 classes, "
            f"got {','.join(header[:4])}..."
        )
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    ids, prevalences = table[:, 0].astype(np.int64), table[:, 1:]
    bad = np.flatnonzero(
        (np.abs(prevalences.sum(1) - 1) > SUM_TOLERANCE)
        | (prevalences < 0).any(1)
        | (prevalences > 1).any(1)
    )
    if len(bad):
        raise ValueError(
            f"{path}: the prevalences of ids {ids[bad[:5]].tolist()} are not on the "
            f"simplex (each in [0, 1], summing to 1 within {SUM_TOLERANCE})"
        )
    return ids, prevalences


class SamplesFromFolder(AbstractProtocol):
    """A QuaPy protocol over a folder of LeQua bags: yields ``(X, prevalence)`` for every id
    of the prevalence file, in its order, reading ``<folder>/<id>.txt`` (labels, where a file
    has them, are dropped). Pass it to ``qp.evaluation.evaluate`` or to a quantifier's
    ``fit_bags``."""

    def __init__(self, folder: str, prevalence_file: str) -> None:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"folder {folder!r} does not exist")
        self.folder = folder
        self.ids, self.prevalences = read_prevalences(prevalence_file)
        missing = [i for i in self.ids if not os.path.exists(self._path(i))]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks the samples of ids {missing[:5]} listed in {prevalence_file}"
            )

    def _path(self, sample_id: int) -> str:
        return os.path.join(self.folder, f"{sample_id}.txt")

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for sample_id, prevalence in zip(self.ids, self.prevalences):
            X, _ = read_vectors(self._path(sample_id))
            yield X, prevalence

    def total(self) -> int:
        return len(self.ids)

    @property
    def n_classes(self) -> int:
        return self.prevalences.shape[1]


class LeQuaData(NamedTuple):
    """What :func:`load_lequa` returns (unpacks as a 4-tuple)."""

    #: the labelled training examples (``train.X``, ``train.y``), or None if the folder has none
    train: Optional[LabelledCollection]
    #: the development bags with their prevalences
    dev: SamplesFromFolder
    #: the test bags, or None where the folder lacks them or their prevalences
    test: Optional[SamplesFromFolder]
    #: class names by code from ``label_map.txt`` (None without it)
    class_names: Optional[list[str]]


def _public_folder(path: str, task: Optional[str]) -> str:
    path = os.path.expanduser(path)
    candidates = [os.path.join(path, task, "public"), os.path.join(path, task)] if task else []
    candidates += [os.path.join(path, "public"), path]
    for folder in candidates:
        if os.path.exists(os.path.join(folder, "dev_prevalences.txt")):
            return folder
    raise FileNotFoundError(
        f"no LeQua task folder (one holding dev_prevalences.txt) under "
        f"path={path!r} with task={task!r}; looked in {candidates}"
    )


def load_lequa(path: str, task: Optional[str] = None) -> LeQuaData:
    """Read a LeQua 2022 or 2024 vector task from a local folder.

    Args:
        path: the folder the LeQua archives were unzipped into (holding ``<task>/public``),
            or the task's ``public`` folder itself.
        task: ``"T1A"``, ``"T1B"`` (2022), ``"T1"`` ... ``"T4"`` (2024) or any folder name in
            that layout; None when ``path`` is already the task's folder.

    Returns:
        :class:`LeQuaData` ``(train, dev, test, class_names)``: ``train`` a QuaPy
        ``LabelledCollection`` (from ``training_data.txt``, or the labelled bags of
        ``training_samples/`` joined, as 2024's T3 has), ``dev`` and ``test``
        :class:`SamplesFromFolder` protocols.
    """
    folder = _public_folder(path, task)
    dev = SamplesFromFolder(
        os.path.join(folder, "dev_samples"), os.path.join(folder, "dev_prevalences.txt")
    )
    n_classes = dev.n_classes
    test = None
    if os.path.exists(os.path.join(folder, "test_prevalences.txt")):
        test = SamplesFromFolder(
            os.path.join(folder, "test_samples"), os.path.join(folder, "test_prevalences.txt")
        )
        if test.n_classes != n_classes:
            raise ValueError(
                f"{folder}: test_prevalences.txt has {test.n_classes} classes, "
                f"dev_prevalences.txt {n_classes}"
            )

    train = None
    train_file = os.path.join(folder, "training_data.txt")
    if os.path.exists(train_file):
        X, y = read_vectors(train_file)
        if y is None:
            raise ValueError(f"{train_file} has no 'label' column")
        train = LabelledCollection(X, y, classes=np.arange(n_classes))
    elif os.path.exists(os.path.join(folder, "training_prevalences.txt")):
        ids, _ = read_prevalences(os.path.join(folder, "training_prevalences.txt"))
        parts = [read_vectors(os.path.join(folder, "training_samples", f"{i}.txt")) for i in ids]
        if any(y is None for _, y in parts):
            raise ValueError(
                f"{folder}/training_samples: every training sample needs a 'label' column"
            )
        train = LabelledCollection(
            np.concatenate([X for X, _ in parts]),
            np.concatenate([y for _, y in parts]),
            classes=np.arange(n_classes),
        )
    if train is not None and (train.labels.min() < 0 or train.labels.max() >= n_classes):
        raise ValueError(
            f"{folder}: training labels must be 0..{n_classes - 1}, as the "
            f"prevalence files' columns"
        )

    names = None
    label_map = os.path.join(folder, "label_map.txt")
    if os.path.exists(label_map):
        codes = {}
        with open(label_map) as f:
            for line in f:
                if line.strip():
                    name, code = line.rsplit(maxsplit=1)
                    codes[int(code)] = name
        names = [codes.get(c, str(c)) for c in range(n_classes)]
    return LeQuaData(train, dev, test, names)
