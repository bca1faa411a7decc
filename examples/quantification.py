"""Quantification the way the field evaluates it: fastdl's quantifiers inside QuaPy.

Quantification estimates the class prevalences of a *bag* of unlabelled examples. This
example compares fastdl's three bag-trained quantifiers (:mod:`fastdl.quantification`:
HistNetQ, DeepSets and the Set Transformer, on fastdl's kernels) with QuaPy's standard
methods, all under QuaPy's own protocols and error measures:

1. data that ships with scikit-learn (no download), standardised with the training split's
   statistics and split 50/50 (stratified) into a training and a test pool:

   - ``digits``: 8x8 images, 10 classes (easy: a linear classifier is ~96% accurate);
   - ``breast_cancer``: binary, 30 features (easy too);
   - ``overlap``: ``make_classification`` with ``class_sep=0.5`` (binary, 20 features, two
     clusters per class): the classes overlap, a classifier errs often, and classify and
     count is badly biased under prior shift: the case quantification methods exist for;

2. the baselines: QuaPy's CC, ACC, PACC, EMQ (SLD) and HDy (one-vs-all for 10 classes) on
   a calibrated logistic regression (``CalibratedClassifierCV``);
3. fastdl's quantifiers, trained on bags of ``--bag-size`` examples that a QuaPy protocol
   draws from the training pool, with one of HistNetQ's bag losses (``deep_recipe``:
   binary, APP bags and the relative absolute error, the absolute error for the Set
   Transformer; 10 classes, UPP bags and the absolute error), dropout 0.3 in HistNetQ and
   DeepSets;
4. test bags drawn from the test pool by QuaPy's APP (binary: the 21-point prevalence grid)
   or UPP (10 classes, where APP's grid is intractable), the same bags for every method;
5. QuaPy's absolute error and relative absolute error (smoothed, eps = 1 / (2 * bag size),
   as LeQua) of every bag: a table of mean ± std per method, printed and written as CSV,
   and a plot of true vs estimated prevalence per method (PNG).

Run::

    python examples/quantification.py                 # the README's table, minutes on CPU
    python examples/quantification.py --quick         # well under a minute
    python examples/quantification.py --datasets overlap --steps 5000 --out results/
    python examples/quantification.py --threads 0     # torch's and BLAS's own thread counts

``run(...)`` does the same and returns the results (the tests call it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

import quapy as qp
from quapy.data import LabelledCollection
from quapy.method import aggregative as agg

from fastdl.quantification import DeepSetsQuantifier, HistNetQuantifier, SetTransformerQuantifier

DATASETS = ("digits", "breast_cancer", "overlap")
BASELINES = ("CC", "ACC", "PACC", "EMQ", "HDy")
DEEP = ("HistNetQ", "DeepSets", "SetTransformer")
METHODS = BASELINES + DEEP

#: ``--quick`` and the full run: training steps, bag size, test bags (APP: repeats per grid
#: point of 21; UPP: bags) and the cross-validation folds of the baselines' classifier.
QUICK = dict(steps=60, bag_size=100, app_repeats=1, upp_bags=50, folds=3)
FULL = dict(steps=2000, bag_size=100, app_repeats=10, upp_bags=500, folds=5)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_dataset(name: str, seed: int = 0) -> tuple[LabelledCollection, LabelledCollection]:
    """``(train, test)`` pools of ``name`` (see the module docstring), standardised with the
    training pool's mean and standard deviation."""
    from sklearn.datasets import load_breast_cancer, load_digits, make_classification
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if name == "digits":
        X, y = load_digits(return_X_y=True)
    elif name == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
    elif name == "overlap":
        X, y = make_classification(
            n_samples=4000,
            n_features=20,
            n_informative=5,
            n_redundant=5,
            n_classes=2,
            class_sep=0.5,
            flip_y=0.0,
            random_state=seed,
        )
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.5, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(X_tr)
    return (
        LabelledCollection(scaler.transform(X_tr).astype(np.float32), y_tr),
        LabelledCollection(scaler.transform(X_te).astype(np.float32), y_te),
    )


def test_protocol(
    test: LabelledCollection, bag_size: int, app_repeats: int, upp_bags: int, seed: int
):
    """APP on the 21-point grid for binary data, UPP for more classes (APP's grid has
    ``C(20 + n - 1, n - 1)`` points for n classes: 10 million for 10)."""
    if test.n_classes == 2:
        return qp.protocol.APP(
            test, sample_size=bag_size, n_prevalences=21, repeats=app_repeats, random_state=seed
        )
    return qp.protocol.UPP(test, sample_size=bag_size, repeats=upp_bags, random_state=seed)


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


def make_method(
    name: str,
    n_classes: int,
    *,
    steps: int,
    bag_size: int,
    seed: int,
    device: str,
    folds: int = 5,
    progress: bool = False,
):
    """A fresh, unfitted quantifier called ``name``; the baselines calibrate their
    classifier and estimate its errors by ``folds``-fold cross-validation."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    if name in BASELINES:
        clf = CalibratedClassifierCV(LogisticRegression(max_iter=3000), cv=folds)
        if name == "HDy":  # binary in QuaPy; one HDy per class for more classes
            hdy = agg.HDy(clf, val_split=folds)
            return hdy if n_classes == 2 else agg.OneVsAllAggregative(hdy, n_jobs=1)
        if name in ("ACC", "PACC"):
            return getattr(agg, name)(clf, val_split=folds)
        return {"CC": agg.CC, "EMQ": agg.EMQ}[name](clf)
    training = dict(
        deep_recipe(name, n_classes),
        steps=steps,
        bag_size=bag_size,
        seed=seed,
        device=device,
        progress=progress,
    )
    if name == "HistNetQ":
        return HistNetQuantifier(dropout=0.3, **training)
    if name == "DeepSets":
        return DeepSetsQuantifier(dropout=0.3, **training)
    if name == "SetTransformer":
        return SetTransformerQuantifier(**training)
    raise ValueError(f"method must be one of {METHODS}, got {name!r}")


def deep_recipe(name: str, n_classes: int) -> dict:
    """How fastdl's quantifier ``name`` trains, by the kind of problem. Binary: bags from
    QuaPy's APP grid (it has bags where a class is absent, as the test grid has) and
    HistNetQ's LeQua loss, the smoothed relative absolute error (the Set Transformer keeps
    the absolute error: with MRAE it collapsed on ``overlap`` in our runs). 10 classes: bags
    from UPP and the absolute error (MRAE as the loss cost HistNetQ half its MAE on digits)."""
    if n_classes == 2:
        return dict(protocol="app", loss="mae" if name == "SetTransformer" else "mrae")
    return dict(protocol="upp", loss="mae")


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


def run(
    quick: bool = False,
    datasets: Sequence[str] = DATASETS,
    methods: Sequence[str] = METHODS,
    steps: Optional[int] = None,
    bag_size: Optional[int] = None,
    app_repeats: Optional[int] = None,
    upp_bags: Optional[int] = None,
    seed: int = 0,
    device: str = "cpu",
    verbose: bool = True,
    progress: bool = False,
) -> dict:
    """Fit every method on every dataset and evaluate it on the same test bags.

    Returns ``{"rows": [...], "predictions": {(dataset, method): (true, estimated)},
    "config": {...}}``; each row has ``dataset``, ``protocol``, ``classes``, ``bags``,
    ``method``, ``mae``, ``mae_std``, ``mrae``, ``mrae_std`` (QuaPy's AE and RAE of every
    test bag, averaged) and ``fit_s``. Unset sizes come from ``QUICK`` or ``FULL``."""
    sizes = dict(QUICK if quick else FULL)
    for key, value in dict(
        steps=steps, bag_size=bag_size, app_repeats=app_repeats, upp_bags=upp_bags
    ).items():
        if value is not None:
            sizes[key] = value
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods must be among {METHODS}, got {m!r}")
    eps = 1.0 / (2 * sizes["bag_size"])
    rows, predictions = [], {}
    for dataset in datasets:
        train, test = load_dataset(dataset, seed)
        protocol = test_protocol(
            test, sizes["bag_size"], sizes["app_repeats"], sizes["upp_bags"], seed + 1
        )
        for method in methods:
            model = make_method(
                method,
                train.n_classes,
                steps=sizes["steps"],
                bag_size=sizes["bag_size"],
                seed=seed,
                device=device,
                folds=sizes["folds"],
                progress=progress,
            )
            start = time.perf_counter()
            model.fit(*train.Xy)
            fit_s = time.perf_counter() - start
            true, estim = qp.evaluation.prediction(model, protocol)
            ae, rae = qp.error.ae(true, estim), qp.error.rae(true, estim, eps=eps)
            predictions[dataset, method] = (true, estim)
            rows.append(
                dict(
                    dataset=dataset,
                    protocol=type(protocol).__name__,
                    classes=train.n_classes,
                    bags=len(true),
                    method=method,
                    mae=float(ae.mean()),
                    mae_std=float(ae.std()),
                    mrae=float(rae.mean()),
                    mrae_std=float(rae.std()),
                    fit_s=fit_s,
                )
            )
            if verbose:
                print(
                    f"{dataset:<14}{method:<15} MAE {ae.mean():.4f}  MRAE {rae.mean():.4f}"
                    f"  (fit {fit_s:.1f} s)",
                    flush=True,
                )
    return {
        "rows": rows,
        "predictions": predictions,
        "config": dict(sizes, seed=seed, device=device, eps=eps),
    }


def format_table(results: dict) -> str:
    """The results as a Markdown table: one row per method, MAE and MRAE (mean ± std) per
    dataset, the best of each column in bold."""
    rows = results["rows"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["dataset"], r["method"]): r for r in rows}
    best = {
        (d, k): min(cell[d, m][k] for m in methods if (d, m) in cell)
        for d in datasets
        for k in ("mae", "mrae")
    }
    head = ["method"]
    for d in datasets:
        r = next(r for r in rows if r["dataset"] == d)
        label = f"{d} ({r['protocol']}, {r['bags']} bags)"
        head += [f"{label} MAE", "MRAE"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for m in methods:
        entries = [m]
        for d in datasets:
            r = cell.get((d, m))
            for k in ("mae", "mrae"):
                if r is None:
                    entries.append("")
                    continue
                text = f"{r[k]:.4f} ± {r[k + '_std']:.4f}"
                entries.append(f"**{text}**" if r[k] == best[d, k] else text)
        lines.append("| " + " | ".join(entries) + " |")
    return "\n".join(lines)


def write_csv(results: dict, path: str) -> None:
    """One line per (dataset, method): the fields of ``run``'s rows."""
    fields = [
        "dataset",
        "protocol",
        "classes",
        "bags",
        "method",
        "mae",
        "mae_std",
        "mrae",
        "mrae_std",
        "fit_s",
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in results["rows"]:
            writer.writerow(
                {k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def plot(results: dict, path: str) -> None:
    """True vs estimated prevalence, one panel per (dataset, method): every test bag's
    positive-class prevalence (binary) or every class's prevalence (10 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(
        len(datasets),
        len(methods),
        squeeze=False,
        figsize=(1.9 * len(methods), 2.0 * len(datasets)),
        sharex=True,
        sharey=True,
    )
    mae = {(r["dataset"], r["method"]): r["mae"] for r in rows}
    for i, d in enumerate(datasets):
        for j, m in enumerate(methods):
            ax = axes[i][j]
            true, estim = results["predictions"][d, m]
            if true.shape[1] == 2:
                true, estim = true[:, 1:], estim[:, 1:]
            ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
            ax.scatter(
                true.ravel(),
                estim.ravel(),
                s=3,
                alpha=0.35,
                color="C3" if m in DEEP else "C0",
                linewidths=0,
            )
            ax.set_title(f"{m}\nMAE {mae[d, m]:.3f}", fontsize=8)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel(f"{d}\nestimated", fontsize=8)
            if i == len(datasets) - 1:
                ax.set_xlabel("true prevalence", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` CPU threads in torch and in the BLAS under numpy and
    scikit-learn (``n=0``: leave them as they are). These networks and classifiers are small:
    on a shared 2-core machine, two threads per op spend far more time waiting for each
    other than they save (``--quick`` took 339 s with two, 22 s with one)."""
    if n == 0:
        yield
        return
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (well under a minute)")
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated, among {','.join(DATASETS)}",
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, among {','.join(METHODS)}"
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="training steps of fastdl's quantifiers "
        f"(default {FULL['steps']}, quick {QUICK['steps']})",
    )
    parser.add_argument(
        "--bag-size", type=int, help=f"examples per bag (default {FULL['bag_size']})"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (fastdl's quantifiers)")
    parser.add_argument("--out", default=".", help="folder for quantification.csv and .png")
    parser.add_argument("--progress", action="store_true", help="tqdm bars while training")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch and BLAS (default 1; 0: the libraries' own)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with cpu_threads(args.threads):
        results = run(
            quick=args.quick,
            datasets=args.datasets.split(","),
            methods=args.methods.split(","),
            steps=args.steps,
            bag_size=args.bag_size,
            seed=args.seed,
            device=args.device,
            verbose=True,
            progress=args.progress,
        )
    elapsed = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    write_csv(results, os.path.join(args.out, "quantification.csv"))
    plot(results, os.path.join(args.out, "quantification.png"))
    print()
    print(format_table(results))
    print(f"\n{elapsed:.0f} s; wrote {os.path.join(args.out, 'quantification.csv')} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
