"""fastdl.quantification: HistNetQ, DeepSets and the Set Transformer as QuaPy quantifiers.

- QuaPy's own evaluation calls (``evaluate``, ``evaluation_report``, ``GridSearchQ``) take
  them: shapes, prevalences on the simplex, and an error below classify and count's on an
  easy problem where CC is biased (two overlapping Gaussians under prior shift);
- the protocol wiring: the training bags are the protocol's, with its prevalences;
- reproducibility with a seed; bags with known prevalences only (``fit_bags``);
- the bag losses against QuaPy's error measures;
- the LeQua-layout loader on a tiny synthetic folder;
- a short run of ``examples/quantification.py``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

qp = pytest.importorskip("quapy")
pytest.importorskip("sklearn")

from helpers import CUDA_AVAILABLE, assert_raises_naming  # noqa: E402
from quapy.data import LabelledCollection  # noqa: E402
from quapy.protocol import APP, UPP  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from fastdl.quantification import (
    BAG_LOSSES,
    DeepSetsQuantifier,  # noqa: E402
    HistNetQuantifier,
    SetTransformerQuantifier,
    load_lequa,
)

ROOT = Path(__file__).resolve().parents[1]
QUANTIFIERS = (HistNetQuantifier, DeepSetsQuantifier, SetTransformerQuantifier)
SMALL = dict(bag_size=50, batch_size=16, progress=False)  # small bags: a few seconds a fit
#: Networks sized for a 2-feature problem (the defaults are for tens of features).
TINY = {
    "HistNetQuantifier": dict(n_features=16, extractor_hidden=32, hidden=32),
    "DeepSetsQuantifier": dict(hidden=(32, 32)),
    "SetTransformerQuantifier": dict(dim_hidden=32, num_inds=8, lr=3e-3),
}


def gaussians(n: int, seed: int, shift: float = 1.0, dims: int = 2):
    """Two unit Gaussians ``shift`` apart on every axis: a classifier is ~84% accurate at
    shift 1, so classify and count's estimate is pulled towards 0.5."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    X = rng.normal(size=(n, dims)) + shift * y[:, None]
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def easy():
    X, y = gaussians(3000, seed=1)
    Xt, yt = gaussians(2000, seed=2)
    return LabelledCollection(X, y), LabelledCollection(Xt, yt)


def app(test: LabelledCollection, sample_size: int = 50) -> APP:
    return APP(test, sample_size=sample_size, n_prevalences=11, repeats=4, random_state=0)


@pytest.fixture(scope="module")
def fitted(easy):
    """Each quantifier trained once on the easy problem (reused by several tests)."""
    train, _ = easy
    return {
        cls.__name__: cls(steps=150, seed=0, **TINY[cls.__name__], **SMALL).fit(*train.Xy)
        for cls in QUANTIFIERS
    }


# ---------------------------------------------------------------------------------------------
# QuaPy's evaluation
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.__name__ for c in QUANTIFIERS])
def test_beats_classify_and_count_under_quapy_evaluate(fitted, easy, name):
    train, test = easy
    cc = qp.method.aggregative.CC(LogisticRegression()).fit(*train.Xy)
    cc_mae = qp.evaluation.evaluate(cc, app(test), "mae")
    ours = qp.evaluation.evaluate(fitted[name], app(test), "mae")
    assert 0 < ours < 0.75 * cc_mae, f"{name} MAE {ours:.4f}, CC {cc_mae:.4f}"
    losses = np.asarray(fitted[name].losses_)
    assert np.isfinite(losses).all() and losses[-30:].mean() < 0.7 * losses[:30].mean()


@pytest.mark.slow
def test_evaluation_report(fitted, easy, monkeypatch):
    _, test = easy
    monkeypatch.setitem(qp.environ, "SAMPLE_SIZE", 50)  # mrae's eps = 1 / (2 * 50)
    protocol = app(test)
    report = qp.evaluation.evaluation_report(
        fitted["HistNetQuantifier"], protocol, error_metrics=["mae", "mrae"]
    )
    assert list(report.columns) == ["true-prev", "estim-prev", "mae", "mrae"]
    assert len(report) == protocol.total() == 11 * 4
    estim = np.stack(report["estim-prev"].to_numpy())
    true = np.stack(report["true-prev"].to_numpy())
    assert estim.shape == true.shape == (44, 2)
    assert (estim >= 0).all() and np.allclose(estim.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(report["mae"], np.abs(true - estim).mean(1), rtol=1e-6)
    # The estimates follow the truth: a high correlation over the grid.
    assert np.corrcoef(true[:, 1], estim[:, 1])[0, 1] > 0.95


def test_multiclass_labels_and_predict_shapes():
    rng = np.random.default_rng(0)
    y = rng.choice(np.array(["cat", "dog", "eel"]), size=600)
    X = rng.normal(size=(600, 5)).astype(np.float32) + (y == "dog")[:, None] * 2.0
    model = HistNetQuantifier(steps=20, n_bins=4, **SMALL).fit(X, y)
    assert model.classes_.tolist() == ["cat", "dog", "eel"] and model.n_features_in_ == 5
    for n in (1, 7, 300):  # bags of any size, not only the training bag size
        p = model.predict(X[:n])
        assert p.shape == (3,) and p.dtype == np.float64
        assert (p >= 0).all() and abs(p.sum() - 1) < 1e-6
    np.testing.assert_array_equal(model.quantify(X[:9]), model.predict(X[:9]))
    # Bags of mixed sizes at once (padded and masked) give each bag's own prediction.
    together = model.predict_bags([X[:7], X[10:60]])
    np.testing.assert_allclose(together, [model.predict(X[:7]), model.predict(X[10:60])], atol=1e-5)


def test_grid_search_q_selects_hyperparameters(easy):
    train, test = easy
    val = UPP(test, sample_size=50, repeats=20, random_state=0)
    model = HistNetQuantifier(steps=15, **SMALL)
    search = qp.model_selection.GridSearchQ(
        model, {"n_bins": [4, 8], "lr": [1e-3, 3e-3]}, protocol=val, error="mae", refit=False
    )
    search.fit(*train.Xy)
    assert len(search.param_scores_) == 4
    assert search.best_params_["n_bins"] in (4, 8)
    assert search.best_model_.get_params()["n_bins"] == search.best_params_["n_bins"]
    assert model.get_params()["n_bins"] == 8  # the searched copies, not the original, changed


def test_get_params_set_params_round_trip():
    model = SetTransformerQuantifier(num_inds=8, steps=7, loss="mae")
    params = model.get_params()
    assert params["num_inds"] == 8 and params["steps"] == 7 and params["loss"] == "mae"
    assert {"protocol", "bag_size", "seed", "device", "progress"} <= set(params)
    clone = SetTransformerQuantifier(**params)
    assert clone.get_params() == params
    model.set_params(num_inds=4, lr=0.01)
    assert model.num_inds == 4 and model.lr == 0.01


# ---------------------------------------------------------------------------------------------
# Protocol wiring, seeds, devices, bad arguments
# ---------------------------------------------------------------------------------------------


class RecordingUPP(UPP):
    """UPP that records every protocol it was made as and every bag it yields."""

    made: list = []
    bags: list = []

    def __init__(self, data, **kwargs):
        super().__init__(data, **kwargs)
        RecordingUPP.made.append((len(data), kwargs))

    def __call__(self):
        for bag in super().__call__():
            RecordingUPP.bags.append(bag)
            yield bag


def test_training_bags_come_from_the_protocol():
    RecordingUPP.made, RecordingUPP.bags = [], []
    X, y = gaussians(400, seed=0)
    model = HistNetQuantifier(
        protocol=RecordingUPP,
        protocol_params={"repeats": 40},
        steps=6,
        bag_size=30,
        batch_size=16,
        seed=3,
        progress=False,
    ).fit(X, y)
    # 6 steps of 16 bags = 96 bags: three rounds of 40, each with its own seed.
    assert len(RecordingUPP.made) == 3 and len(RecordingUPP.bags) == 120
    states = [kw["random_state"] for _, kw in RecordingUPP.made]
    assert len(set(states)) == 3 and all(isinstance(s, int) for s in states)
    assert all(
        n == 400 and kw["sample_size"] == 30 and kw["repeats"] == 40 for n, kw in RecordingUPP.made
    )
    for index, prevalence in RecordingUPP.bags:  # row indices of X with the bag's true prevalence
        assert index.shape == (30,)
        np.testing.assert_allclose(np.bincount(y[index], minlength=2) / 30, prevalence)
    assert len(model.losses_) == 6
    # The same seed makes the same protocol seeds.
    RecordingUPP.made = []
    HistNetQuantifier(
        protocol=RecordingUPP,
        protocol_params={"repeats": 40},
        steps=6,
        bag_size=30,
        seed=3,
        progress=False,
    ).fit(X, y)
    assert [kw["random_state"] for _, kw in RecordingUPP.made] == states


def test_app_protocol_by_name():
    X, y = gaussians(300, seed=0)
    model = DeepSetsQuantifier(
        protocol="app", protocol_params={"n_prevalences": 5}, steps=5, **SMALL
    ).fit(X, y)
    assert len(model.losses_) == 5
    # APP on 10 classes at 21 points is millions of bags: QuaPy's own sanity check says so.
    y10 = np.arange(300) % 10
    with pytest.raises(RuntimeError, match="exceeds the maximum"):
        DeepSetsQuantifier(protocol="app", steps=1, **SMALL).fit(X, y10)


def test_seed_reproducibility(easy):
    train, test = easy
    state = torch.random.get_rng_state()
    runs = [
        HistNetQuantifier(steps=20, seed=s, **TINY["HistNetQuantifier"], **SMALL).fit(*train.Xy)
        for s in (7, 7, 8)
    ]
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    bag = test.X[:50]
    assert runs[0].losses_ == runs[1].losses_
    np.testing.assert_array_equal(runs[0].predict(bag), runs[1].predict(bag))
    assert runs[0].losses_ != runs[2].losses_
    assert not np.array_equal(runs[0].predict(bag), runs[2].predict(bag))


def test_fit_bags_trains_on_prevalences_only(easy):
    train, test = easy
    bags = list(UPP(train, sample_size=40, repeats=60, random_state=0)())
    bags += list(UPP(train, sample_size=25, repeats=20, random_state=1)())  # mixed sizes
    model = HistNetQuantifier(steps=100, seed=0, **TINY["HistNetQuantifier"], **SMALL)
    model.fit_bags(bags)
    assert model.classes_.tolist() == [0, 1]
    losses = np.asarray(model.losses_)
    assert losses[-20:].mean() < 0.7 * losses[:20].mean()
    err = qp.evaluation.evaluate(model, app(test), "mae")
    assert err < 0.1, err


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a GPU and fastdl's CUDA kernels")
def test_trains_and_predicts_on_cuda(easy):
    train, test = easy
    model = HistNetQuantifier(steps=100, device="cuda", **SMALL).fit(*train.Xy)
    assert next(model.model_.parameters()).is_cuda
    assert qp.evaluation.evaluate(model, app(test), "mae") < 0.1


def test_bad_arguments_name_themselves():
    X, y = gaussians(100, seed=0)
    cases = [
        (dict(loss="l2"), "loss"),
        (dict(protocol="xyz"), "protocol"),
        (dict(protocol=dict), "protocol"),
        (dict(bag_size=0), "bag_size"),
        (dict(steps=1.5), "steps"),
        (dict(lr=-1.0), "lr"),
        (dict(device="tpu"), "device"),
        (dict(seed="1"), "seed"),
        (dict(protocol_params=[1]), "protocol_params"),
    ]
    for kwargs, name in cases:
        model = HistNetQuantifier(progress=False, **kwargs)
        assert_raises_naming(ValueError, lambda: model.fit(X, y), name)
    model = HistNetQuantifier(steps=2, **SMALL)
    assert_raises_naming(RuntimeError, lambda: model.predict(X), "fit")
    assert_raises_naming(ValueError, lambda: model.fit(X, np.zeros(100)), "y", "2 classes")
    assert_raises_naming(ValueError, lambda: model.fit(X, y[:50]), "y")
    assert_raises_naming(ValueError, lambda: model.fit(X[:, 0], y), "X")
    model.fit(X, y)
    assert_raises_naming(ValueError, lambda: model.predict(np.zeros((5, 3))), "X", "2 features")
    assert_raises_naming(ValueError, lambda: model.predict(np.zeros((0, 2))), "X")
    if not torch.cuda.is_available():
        assert_raises_naming(
            RuntimeError, lambda: HistNetQuantifier(device="cuda").fit(X, y), "device"
        )


def test_import_fastdl_works_without_quapy():
    code = (
        "import sys; sys.modules['quapy'] = None\n"
        "import fastdl, fastdl.models\n"
        "try:\n    import fastdl.quantification\nexcept ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "ImportError" in out and "fastdl[quantification]" in out, out


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def test_bag_losses_are_quapys_error_measures():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=6)
    p[0] = [0, 0, 0.5, 0.5]  # a class absent: mrae's smoothing matters
    q = rng.dirichlet(np.ones(4), size=6)
    eps = 1 / (2 * 100)
    pt, qt = torch.tensor(p), torch.tensor(q, requires_grad=True)
    expected = {
        "mae": qp.error.mae(p, q),
        "mse": qp.error.mse(p, q),
        "mrae": qp.error.mrae(p, q, eps=eps),
    }
    for name, fn in BAG_LOSSES.items():
        value = fn(qt, pt, eps)
        np.testing.assert_allclose(value.item(), expected[name], rtol=1e-10)
        (grad,) = torch.autograd.grad(value, qt)
        assert torch.isfinite(grad).all()
    assert_raises_naming(ValueError, lambda: BAG_LOSSES["mrae"](qt, pt, 0.0), "eps")
    assert_raises_naming(ValueError, lambda: BAG_LOSSES["mae"](qt, pt[:, :3]), "p_hat")


# ---------------------------------------------------------------------------------------------
# LeQua layout
# ---------------------------------------------------------------------------------------------


def _write_vectors(path: Path, X: np.ndarray, y=None) -> None:
    header = ([] if y is None else ["label"]) + [str(i) for i in range(X.shape[1])]
    rows = X if y is None else np.column_stack([y, X])
    fmt = ["%d"] * (y is not None) + ["%.6f"] * X.shape[1]
    np.savetxt(path, rows, delimiter=",", header=",".join(header), comments="", fmt=fmt)


def _write_prevalences(path: Path, prevalences: np.ndarray) -> None:
    header = "id," + ",".join(str(i) for i in range(prevalences.shape[1]))
    rows = np.column_stack([np.arange(len(prevalences)), prevalences])
    np.savetxt(
        path,
        rows,
        delimiter=",",
        header=header,
        comments="",
        fmt=["%d"] + ["%.6f"] * prevalences.shape[1],
    )


def make_lequa(
    root: Path,
    task: str = "T1B",
    n_classes: int = 3,
    dims: int = 4,
    t3_layout: bool = False,
    seed: int = 0,
) -> dict:
    """A tiny LeQua task folder (``root/task/public``) of Gaussian classes; returns what was
    written."""
    rng = np.random.default_rng(seed)
    public = root / task / "public"
    (public / "dev_samples").mkdir(parents=True)
    (public / "test_samples").mkdir()

    def draw(counts):
        y = np.repeat(np.arange(n_classes), counts)
        return (rng.normal(size=(len(y), dims)) + 2.0 * y[:, None]).astype(np.float32), y

    X, y = draw([40] * n_classes)
    if t3_layout:  # LeQua 2024 T3: labelled training bags instead of one training file
        (public / "training_samples").mkdir()
        halves = np.array_split(rng.permutation(len(y)), 2)
        for i, idx in enumerate(halves):
            _write_vectors(public / "training_samples" / f"{i}.txt", X[idx], y[idx])
        _write_prevalences(
            public / "training_prevalences.txt",
            np.stack([np.bincount(y[h], minlength=n_classes) / len(h) for h in halves]),
        )
    else:
        _write_vectors(public / "training_data.txt", X, y)
    (public / "label_map.txt").write_text("".join(f"class_{c} {c}\n" for c in range(n_classes)))
    written = {"X": X, "y": y}
    for split in ("dev", "test"):
        counts = rng.multinomial(20, np.ones(n_classes) / n_classes, size=5)
        samples, prevalences = [], counts / 20
        for i, c in enumerate(counts):
            Xs, _ = draw(c)
            _write_vectors(public / f"{split}_samples" / f"{i}.txt", Xs)
            samples.append(Xs)
        _write_prevalences(public / f"{split}_prevalences.txt", prevalences)
        written[split] = (samples, prevalences)
    return written


def test_lequa_loader_reads_the_layout(tmp_path):
    written = make_lequa(tmp_path)
    train, dev, test, names = load_lequa(str(tmp_path), "T1B")
    np.testing.assert_allclose(train.X, written["X"], atol=1e-6)
    np.testing.assert_array_equal(train.y, written["y"])
    assert train.n_classes == 3 and names == ["class_0", "class_1", "class_2"]
    for protocol, split in ((dev, "dev"), (test, "test")):
        assert protocol.total() == 5
        samples = list(protocol())
        assert len(samples) == 5
        for (X, p), X_w, p_w in zip(samples, *written[split]):
            np.testing.assert_allclose(X, X_w, atol=1e-6)
            np.testing.assert_allclose(p, p_w)
    # The same folder by its public path, without the task name.
    assert load_lequa(str(tmp_path / "T1B" / "public")).dev.total() == 5

    # The published protocol: train on training_data, evaluate on the test bags with QuaPy.
    model = HistNetQuantifier(steps=30, bag_size=20, n_bins=4, progress=False).fit(*train.Xy)
    true, estim = qp.evaluation.prediction(model, test)
    np.testing.assert_allclose(true, written["test"][1])
    assert estim.shape == (5, 3) and np.allclose(estim.sum(1), 1)
    assert np.isfinite(qp.evaluation.evaluate(model, test, "mae"))
    # ... or on the dev bags alone (prevalences, no example labels).
    HistNetQuantifier(steps=5, n_bins=4, progress=False).fit_bags(dev)


def test_lequa_loader_2024_t3_training_samples(tmp_path):
    written = make_lequa(tmp_path, task="T3", n_classes=4, t3_layout=True)
    train, dev, test, _ = load_lequa(str(tmp_path), "T3")
    assert len(train) == len(written["y"]) and train.n_classes == 4
    np.testing.assert_array_equal(np.bincount(train.y), np.bincount(written["y"]))
    assert dev.n_classes == test.n_classes == 4


def test_lequa_loader_errors(tmp_path):
    assert_raises_naming(FileNotFoundError, lambda: load_lequa(str(tmp_path), "T1A"), "T1A")
    make_lequa(tmp_path)
    public = tmp_path / "T1B" / "public"
    os.remove(public / "test_samples" / "3.txt")
    assert_raises_naming(FileNotFoundError, lambda: load_lequa(str(tmp_path), "T1B"), "3")
    _write_prevalences(public / "dev_prevalences.txt", np.array([[0.5, 0.6, 0.0]]))
    assert_raises_naming(ValueError, lambda: load_lequa(str(tmp_path), "T1B"), "simplex")
    text = tmp_path / "T2A" / "public"
    (text / "dev_samples").mkdir(parents=True)
    (text / "dev_samples" / "0.txt").write_text("text\nsome review\n")
    _write_prevalences(text / "dev_prevalences.txt", np.array([[0.5, 0.5]]))
    dev = load_lequa(str(tmp_path), "T2A").dev
    assert_raises_naming(ValueError, lambda: list(dev()), "vectorised")


# ---------------------------------------------------------------------------------------------
# The example
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location(
        "quantification_example", ROOT / "examples" / "quantification.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_example_runs_and_writes_its_outputs(example, tmp_path):
    results = example.run(
        datasets=("overlap",),
        methods=("CC", "EMQ", "HistNetQ"),
        steps=150,
        bag_size=50,
        app_repeats=2,
        seed=0,
        verbose=False,
    )
    rows = {r["method"]: r for r in results["rows"]}
    assert list(rows) == ["CC", "EMQ", "HistNetQ"]
    for r in rows.values():
        assert r["protocol"] == "APP" and r["bags"] == 42 and r["classes"] == 2
        assert 0 < r["mae"] < 0.5 and r["mae_std"] >= 0 and r["mrae"] > 0
    # Overlapping classes: CC is biased, EMQ and HistNetQ correct it.
    assert rows["EMQ"]["mae"] < rows["CC"]["mae"] and rows["HistNetQ"]["mae"] < rows["CC"]["mae"]
    true, estim = results["predictions"]["overlap", "HistNetQ"]
    assert true.shape == estim.shape == (42, 2)
    table = example.format_table(results)
    assert "| HistNetQ |" in table and "overlap (APP, 42 bags) MAE" in table
    example.write_csv(results, tmp_path / "q.csv")
    lines = (tmp_path / "q.csv").read_text().splitlines()
    assert lines[0].startswith("dataset,protocol") and len(lines) == 4
    example.plot(results, tmp_path / "q.png")
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"


def test_example_rejects_unknown_names(example):
    assert_raises_naming(
        ValueError, lambda: example.run(methods=("CCC",), verbose=False), "methods", "CCC"
    )
    assert_raises_naming(ValueError, lambda: example.load_dataset("iris"), "dataset", "iris")
