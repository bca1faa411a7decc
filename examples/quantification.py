"""Quantification with HistNetQ and DeepSets on scikit-learn's digits.

Quantification estimates the class prevalences of a *bag* of unlabelled examples rather than
the class of each example. This example

1. splits scikit-learn's digits (8x8 images, 10 classes; shipped with scikit-learn, no
   download) into a training and a test pool, as a 10-class problem or a binary one
   (digit < 5 vs >= 5);
2. draws bags under the artificial-prevalence protocol (APP): a prevalence vector uniformly
   from the probability simplex, then the bag's examples from each class in those
   proportions (with replacement); training bags come from the training pool, fresh at every
   step, test bags from the test pool;
3. trains :class:`fastdl.models.HistNetQ` (one differentiable histogram per feature, on
   fastdl's fused kernel), :class:`fastdl.models.DeepSets` (mean pooling) and the Set
   Transformer quantifier (:class:`fastdl.models.SetTransformer` with a softmax: the HistNetQ
   paper's attention baseline, on fastdl's fused induced attention) on bag-level
   prevalences only (no example labels), with an MSE or L1 loss and Adam (cosine learning-rate decay);
4. compares them on the test bags with classify-and-count (CC) and adjusted classify-and-count
   (ACC) on a logistic-regression classifier, and with the prevalence-agnostic baseline that
   always predicts the training prevalence, by absolute error (AE) and relative absolute error
   (RAE, smoothed by eps = 1 / (2 * bag size)) of the estimated prevalences.

Run::

    python examples/quantification.py            # a few minutes on a 2-core CPU
    python examples/quantification.py --quick    # well under a minute
    python examples/quantification.py --task binary --steps 500

``run(...)`` does the same and returns the results as a dict (the tests call it).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

import numpy as np
import torch
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
from fastdl.models import DeepSets, HistNetQ, SetTransformer

QUICK = dict(steps=500, bag_size=100, bags=300, batch=16)
FULL = dict(steps=3000, bag_size=200, bags=1000, batch=16)


# ---------------------------------------------------------------------------------------------
# Data: digits and bags under the artificial-prevalence protocol
# ---------------------------------------------------------------------------------------------

def load_digits_task(task: str = "multiclass", seed: int = 0, test_size: float = 0.5):
    """Digits scaled to [0, 1], split (stratified) into train and test pools.

    Returns ``(X_train, y_train, X_test, y_test, n_classes)`` as numpy arrays; ``task`` is
    ``"multiclass"`` (10 classes) or ``"binary"`` (digit >= 5)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    if task == "binary":
        y, n_classes = (y >= 5).astype(np.int64), 2
    elif task == "multiclass":
        n_classes = 10
    else:
        raise ValueError(f"task must be 'multiclass' or 'binary', got {task!r}")
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, stratify=y, random_state=seed)
    return X_tr, y_tr, X_te, y_te, n_classes


def uniform_simplex(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    """``n`` prevalence vectors drawn uniformly from the probability simplex (Dirichlet(1))."""
    return rng.dirichlet(np.ones(n_classes), size=n)


def app_bags(y: np.ndarray, n_classes: int, n_bags: int, bag_size: int, rng: np.random.Generator):
    """Bags of indices into ``y`` under the artificial-prevalence protocol.

    Each bag's prevalence vector is drawn uniformly from the simplex and turned into class
    counts summing to ``bag_size`` (largest remainder); each class's examples are drawn with
    replacement from the pool. Returns ``(indices (n_bags, bag_size), prevalences (n_bags,
    n_classes))``, the prevalences being the bags' true class proportions."""
    pools = [np.flatnonzero(y == c) for c in range(n_classes)]
    target = uniform_simplex(rng, n_bags, n_classes) * bag_size
    counts = np.floor(target).astype(np.int64)
    short = bag_size - counts.sum(axis=1)
    order = np.argsort(-(target - counts), axis=1)
    for b in range(n_bags):
        counts[b, order[b, :short[b]]] += 1
    indices = np.empty((n_bags, bag_size), dtype=np.int64)
    for b in range(n_bags):
        parts = [rng.choice(pools[c], size=counts[b, c], replace=True)
                 for c in range(n_classes) if counts[b, c]]
        indices[b] = rng.permutation(np.concatenate(parts))
    return indices, counts / bag_size


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def absolute_error(p: np.ndarray, p_hat: np.ndarray) -> np.ndarray:
    """AE of each bag: mean over classes of |p - p_hat|."""
    return np.abs(p - p_hat).mean(axis=-1)


def relative_absolute_error(p: np.ndarray, p_hat: np.ndarray, eps: float) -> np.ndarray:
    """RAE of each bag: mean over classes of |p - p_hat| / p, both smoothed as
    ``(q + eps) / (1 + eps * n_classes)`` so that absent classes do not divide by zero."""
    n_classes = p.shape[-1]
    ps = (p + eps) / (1 + eps * n_classes)
    qs = (p_hat + eps) / (1 + eps * n_classes)
    return (np.abs(ps - qs) / ps).mean(axis=-1)


# ---------------------------------------------------------------------------------------------
# Classic quantifiers: classify and count, adjusted classify and count
# ---------------------------------------------------------------------------------------------

class ClassifyAndCount:
    """CC and ACC on a logistic-regression classifier.

    ACC corrects CC's estimate ``q`` with the classifier's misclassification rates estimated by
    cross-validation on the training set: binary, ``p = (q - fpr) / (tpr - fpr)`` clipped to
    [0, 1]; multiclass, ``M p = q`` with ``M[i, j] = P(predict i | class j)`` solved by least
    squares, clipped at 0 and renormalised."""

    def __init__(self, n_classes: int, seed: int = 0, folds: int = 5):
        self.n_classes, self.seed, self.folds = n_classes, seed, folds

    def fit(self, X: np.ndarray, y: np.ndarray) -> "ClassifyAndCount":
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        self.clf = LogisticRegression(max_iter=2000)
        cv = StratifiedKFold(self.folds, shuffle=True, random_state=self.seed)
        pred = cross_val_predict(self.clf, X, y, cv=cv)
        C = self.n_classes
        M = np.zeros((C, C))
        for j in range(C):
            M[:, j] = np.bincount(pred[y == j], minlength=C) / max(1, (y == j).sum())
        self.M = M
        self.clf.fit(X, y)
        return self

    def predict_examples(self, X: np.ndarray) -> np.ndarray:
        return self.clf.predict(X)

    def cc(self, bag_predictions: np.ndarray) -> np.ndarray:
        """CC of bags of predicted labels ``(n_bags, bag_size)`` -> ``(n_bags, n_classes)``."""
        one_hot = np.eye(self.n_classes)[bag_predictions]
        return one_hot.mean(axis=1)

    def acc(self, bag_predictions: np.ndarray) -> np.ndarray:
        q = self.cc(bag_predictions)
        if self.n_classes == 2:
            tpr, fpr = self.M[1, 1], self.M[1, 0]
            if tpr - fpr <= 1e-12:
                return q
            p1 = np.clip((q[:, 1] - fpr) / (tpr - fpr), 0.0, 1.0)
            return np.stack([1 - p1, p1], axis=1)
        p = np.linalg.lstsq(self.M, q.T, rcond=None)[0].T
        p = np.clip(p, 0.0, None)
        total = p.sum(axis=1, keepdims=True)
        return np.where(total > 0, p / np.where(total > 0, total, 1), q)


# ---------------------------------------------------------------------------------------------
# Deep quantifiers
# ---------------------------------------------------------------------------------------------

class DeepSetsQuantifier(nn.Module):
    """DeepSets with a softmax over classes: prevalences summing to 1."""

    def __init__(self, in_features: int, n_classes: int, hidden=(64, 32)):
        super().__init__()
        self.net = DeepSets(in_features, n_classes, hidden=list(hidden), pooling="mean")

    def forward(self, x, mask=None):
        return torch.softmax(self.net(x, mask), dim=-1)


class SetTransformerQuantifier(nn.Module):
    """The HistNetQ paper's Set Transformer baseline: a SetTransformer (two ISABs with
    inducing points, PMA with one seed, two SABs, Linear) whose one output per bag goes
    through a softmax over classes. Attention trains best at a third of the learning rate
    the other quantifiers use (``lr_scale``)."""

    lr_scale = 1 / 3

    def __init__(self, in_features: int, n_classes: int, dim_hidden: int = 64, num_heads: int = 4,
                 num_inds: int = 16):
        super().__init__()
        self.net = SetTransformer(in_features, 1, n_classes, num_inds=num_inds, dim_hidden=dim_hidden,
                                  num_heads=num_heads, ln=True)

    def forward(self, x, mask=None):
        return torch.softmax(self.net(x, mask)[..., 0, :], dim=-1)


def make_models(in_features: int, n_classes: int, histogram: str = "soft") -> dict[str, nn.Module]:
    return {
        "HistNetQ": HistNetQ(in_features, n_classes, n_bins=8, histogram=histogram, n_features=32,
                             extractor_hidden=64, hidden=128),
        "DeepSets": DeepSetsQuantifier(in_features, n_classes),
        "SetTransformer": SetTransformerQuantifier(in_features, n_classes),
    }


def train_model(model: nn.Module, X: torch.Tensor, y: np.ndarray, n_classes: int, *, steps: int,
                bag_size: int, batch: int, lr: float, loss: str, rng: np.random.Generator,
                name: str = "", verbose: bool = True) -> list[float]:
    """Train on fresh APP bags from ``(X, y)`` for ``steps`` Adam steps; returns the losses."""
    loss_fn = nn.MSELoss() if loss == "mse" else nn.L1Loss()
    lr = lr * getattr(model, "lr_scale", 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # Cosine decay to lr / 10 over the run: a high rate early, a settled model at the end.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 10)
    model.train()
    losses, start = [], time.perf_counter()
    every = max(1, steps // 10)
    for step in range(1, steps + 1):
        idx, p = app_bags(y, n_classes, batch, bag_size, rng)
        x = X[torch.from_numpy(idx).to(X.device)]
        target = torch.as_tensor(p, dtype=X.dtype, device=X.device)
        value = loss_fn(model(x), target)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        losses.append(value.item())
        if verbose and (step % every == 0 or step == steps):
            recent = np.mean(losses[-every:])
            print(f"  [{name}] step {step:>5}/{steps}  loss {recent:.5f}  "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
    return losses


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, indices: np.ndarray, chunk: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(indices), chunk):
        idx = torch.from_numpy(indices[i:i + chunk]).to(X.device)
        out.append(model(X[idx]).double().cpu().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------

def run(steps: Optional[int] = None, bag_size: Optional[int] = None, bags: Optional[int] = None,
        seed: int = 0, quick: bool = False, task: str = "multiclass", batch: Optional[int] = None,
        lr: float = 3e-3, loss: str = "mse", histogram: str = "soft",
        models=("HistNetQ", "DeepSets", "SetTransformer"),
        device: str = "cpu", verbose: bool = True) -> dict:
    """Train and evaluate every quantifier; returns

    ``{"errors": {method: {"ae": mean AE, "rae": mean RAE}}, "losses": {model: [per-step
    training loss]}, "config": {...}}`` with methods "train prevalence", "CC", "ACC" and the
    deep ``models`` ("HistNetQ", "DeepSets", "SetTransformer"). Unset sizes come from ``QUICK`` or ``FULL``."""
    defaults = QUICK if quick else FULL
    steps = defaults["steps"] if steps is None else steps
    bag_size = defaults["bag_size"] if bag_size is None else bag_size
    bags = defaults["bags"] if bags is None else bags
    batch = defaults["batch"] if batch is None else batch
    if loss not in ("mse", "l1"):
        raise ValueError(f"loss must be 'mse' or 'l1', got {loss!r}")
    config = dict(steps=steps, bag_size=bag_size, bags=bags, batch=batch, seed=seed, task=task,
                  lr=lr, loss=loss, histogram=histogram, device=device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    X_tr, y_tr, X_te, y_te, n_classes = load_digits_task(task, seed)
    test_idx, test_p = app_bags(y_te, n_classes, bags, bag_size, np.random.default_rng(seed + 1))
    eps = 1.0 / (2 * bag_size)
    estimates: dict[str, np.ndarray] = {}

    # Prevalence-agnostic baseline: always the training set's class proportions.
    train_prev = np.bincount(y_tr, minlength=n_classes) / len(y_tr)
    estimates["train prevalence"] = np.broadcast_to(train_prev, test_p.shape)

    t0 = time.perf_counter()
    quantifier = ClassifyAndCount(n_classes, seed).fit(X_tr, y_tr)
    bag_pred = quantifier.predict_examples(X_te)[test_idx]
    estimates["CC"], estimates["ACC"] = quantifier.cc(bag_pred), quantifier.acc(bag_pred)
    if verbose:
        print(f"logistic regression, CC and ACC fitted ({time.perf_counter() - t0:.1f} s)", flush=True)

    Xtr_t = torch.from_numpy(X_tr).to(device)
    Xte_t = torch.from_numpy(X_te).to(device)
    losses = {}
    all_models = make_models(X_tr.shape[1], n_classes, histogram)
    for name in models:
        model = all_models[name].to(device)
        if verbose:
            n_params = sum(p.numel() for p in model.parameters())
            print(f"training {name} ({n_params} parameters)", flush=True)
        losses[name] = train_model(model, Xtr_t, y_tr, n_classes, steps=steps, bag_size=bag_size,
                                   batch=batch, lr=lr, loss=loss, rng=rng, name=name, verbose=verbose)
        estimates[name] = predict(model, Xte_t, test_idx)

    errors = {name: {"ae": float(absolute_error(test_p, est).mean()),
                     "rae": float(relative_absolute_error(test_p, est, eps).mean())}
              for name, est in estimates.items()}
    return {"errors": errors, "losses": losses, "config": config}


def format_table(results: dict) -> str:
    c = results["config"]
    lines = [f"digits, {c['task']}, {c['bags']} test bags of {c['bag_size']} (APP), "
             f"{c['steps']} training steps of {c['batch']} bags",
             f"{'method':<18}{'AE':>10}{'RAE':>10}",
             "-" * 38]
    for name, e in results["errors"].items():
        lines.append(f"{name:<18}{e['ae']:>10.4f}{e['rae']:>10.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="training steps per model (default 3000, quick 500)")
    parser.add_argument("--bag-size", type=int, help="examples per bag (default 200, quick 100)")
    parser.add_argument("--bags", type=int, help="test bags (default 1000, quick 300)")
    parser.add_argument("--batch", type=int, help="training bags per step (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a short run (well under a minute on CPU)")
    parser.add_argument("--task", choices=("multiclass", "binary"), default="multiclass")
    parser.add_argument("--loss", choices=("mse", "l1"), default="mse")
    parser.add_argument("--lr", type=float, default=3e-3,
                        help="Adam learning rate (cosine decay to lr/10)")
    parser.add_argument("--histogram", choices=("soft", "sigmoid", "rbf", "hard"), default="soft")
    parser.add_argument("--models", default="HistNetQ,DeepSets,SetTransformer",
                        help="comma-separated deep quantifiers to train")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = run(steps=args.steps, bag_size=args.bag_size, bags=args.bags, seed=args.seed,
                  quick=args.quick, task=args.task, batch=args.batch, lr=args.lr, loss=args.loss,
                  histogram=args.histogram, models=tuple(args.models.split(",")), device=args.device)
    print()
    print(format_table(results))
    print(f"\n({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
