"""The machinery the bag-trained quantifiers share: QuaPy protocols as bag samplers, the
training loop, seeding, devices and prediction.

QuaPy is imported here, so importing :mod:`fastdl.quantification` needs it; ``import
fastdl`` does not import this package.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

try:
    from quapy.data import LabelledCollection
    from quapy.method.base import BaseQuantifier
    from quapy.protocol import APP, NPP, UPP, AbstractProtocol, AbstractStochasticSeededProtocol
    from tqdm.auto import tqdm  # a dependency of QuaPy
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "fastdl.quantification needs QuaPy: pip install 'fastdl[quantification]' "
        "(or pip install quapy)"
    ) from err

import fastdl

from .._args import positive_int
from .losses import bag_loss

__all__ = ["BagQuantifier", "PROTOCOLS", "PrevalenceHead"]

#: QuaPy's protocols by the name a quantifier's ``protocol`` argument takes.
PROTOCOLS: dict[str, type] = {"upp": UPP, "app": APP, "npp": NPP}

Protocol = Union[str, type]


# ---------------------------------------------------------------------------------------------
# Argument checks (at fit time: scikit-learn's convention keeps __init__ a plain store)
# ---------------------------------------------------------------------------------------------


def _non_negative_float(value: Any, name: str, positive: bool = False) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a {kind} float, got {value!r}")
    return float(value)


def _as_matrix(X: Any, name: str = "X") -> np.ndarray:
    """``X`` as a float32 ``(n, features)`` array (scipy sparse matrices are densified)."""
    if torch.is_tensor(X):
        X = X.detach().cpu().numpy()
    if hasattr(X, "toarray"):
        X = X.toarray()
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-d array (examples, features), got shape {X.shape}"
        )
    if not np.isfinite(X).all():
        raise ValueError(f"{name} must hold finite values only")
    return X


def _store_params(obj: Any, values: dict[str, Any]) -> None:
    """Store every argument of an ``__init__`` under its own name, unchanged (what
    scikit-learn's ``get_params``/``set_params`` and so QuaPy's model selection expect)."""
    for name, value in values.items():
        if name not in ("self", "__class__"):
            setattr(obj, name, value)


@contextlib.contextmanager
def _seeded(seed: Optional[int], device: torch.device) -> Iterator[None]:
    """Seed torch for the block (initial weights, dropout) without changing the caller's
    random state; with ``seed=None`` the global state is used as it is."""
    if seed is None:
        yield
        return
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


class PrevalenceHead(nn.Module):
    """Prevalences from a set network's class scores: a softmax over classes. A Set
    Transformer's ``(bags, 1, n_classes)`` output (one PMA seed) is squeezed first."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        scores = self.net(x, mask)
        if scores.dim() == 3:
            scores = scores[:, 0]
        return torch.softmax(scores, dim=-1)


# ---------------------------------------------------------------------------------------------
# The shared quantifier
# ---------------------------------------------------------------------------------------------

TRAINING_ARGS_DOC = """
    Training (the same for the three quantifiers):
        protocol: the QuaPy protocol that draws the training bags from ``(X, y)``: ``"upp"``
            (default: prevalences uniform on the simplex, Kraemer sampling), ``"app"`` (the
            artificial-prevalence grid; tractable for few classes) or ``"npp"`` (the training
            prevalence), or a :class:`quapy.protocol.OnLabelledCollectionProtocol` subclass.
        protocol_params: extra keyword arguments for the protocol (e.g. ``{"n_prevalences":
            11}`` for APP); ``repeats`` sets how many bags one round of the protocol yields
            (default 500 for UPP/NPP, 1 per grid point for APP). Rounds are shuffled and
            drawn again, with new seeds, until ``steps`` batches have been taken.
        bag_size: examples per training bag (prediction takes bags of any size).
        batch_size: bags per Adam step.
        steps: Adam steps; the learning rate decays from ``lr`` to ``lr / 10`` on a cosine.
        lr, weight_decay: Adam's learning rate and L2 penalty.
        loss: the bag-level loss, HistNetQ's choices: ``"mae"`` (L1), ``"mse"`` or ``"mrae"``
            (relative absolute error smoothed by ``eps = 1 / (2 * bag_size)``, as LeQua).
        standardize: scale each input feature to zero mean and unit variance with the training
            set's statistics (applied again at prediction).
        device: ``"cpu"`` (default), ``"cuda"``/``"cuda:N"``, or None for CUDA when it can run.
        seed: seeds the initial weights, dropout and the protocol's bags: two fits with the
            same seed give the same quantifier; None draws from the global random states.
        progress: show a tqdm progress bar over the training steps (False silences it).

    After ``fit``: ``classes_`` (the labels, in the order of the prevalence vectors),
    ``n_features_in_``, ``model_`` (the torch module), ``losses_`` (the loss of every step).
"""


class BagQuantifier(BaseQuantifier):
    """A QuaPy quantifier that trains a permutation-invariant network on bags of examples
    labelled only by their class prevalences, and predicts the prevalences of a bag with one
    forward pass. Subclasses give ``__init__`` (every hyperparameter a keyword argument,
    stored as it is) and :meth:`_build_model`."""

    # Set by the subclasses' __init__ through _store_params.
    protocol: Protocol
    protocol_params: Optional[dict]
    bag_size: int
    batch_size: int
    steps: int
    lr: float
    weight_decay: float
    loss: str
    standardize: bool
    device: Optional[str]
    seed: Optional[int]
    progress: bool

    def _build_model(self, in_features: int, n_classes: int) -> nn.Module:
        """The network: ``(bags, N, in_features)`` and an optional mask ``(bags, N)`` ->
        prevalences ``(bags, n_classes)`` on the simplex."""
        raise NotImplementedError

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, X: Any, y: Any) -> "BagQuantifier":
        """Train on bags drawn by ``protocol`` from the labelled examples ``(X, y)``.

        Args:
            X: ``(n, features)`` array-like (numpy, torch or scipy sparse).
            y: ``(n,)`` labels, any hashable values; at least two classes.

        Returns:
            self.
        """
        X = _as_matrix(X)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(
                f"y must be 1-d with one label per row of X ({len(X)}), got shape {y.shape}"
            )
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"y must hold at least 2 classes, got {classes.tolist()}")
        self._check_params()
        protocol_cls = self._protocol_class()
        device = self._resolve_device()
        # The protocol samples indices into X: the instances of its collection are row numbers.
        data = LabelledCollection(np.arange(len(y)), codes, classes=np.arange(len(classes)))
        self._prepare(X, classes, device)
        features = self._to_device(X)
        bags = self._protocol_bags(data, protocol_cls)

        def batches() -> Iterator[tuple[Tensor, Tensor, Optional[Tensor]]]:
            while True:
                drawn = [next(bags) for _ in range(self.batch_size)]
                index = torch.as_tensor(np.stack([b[0] for b in drawn]), device=device)
                p = torch.as_tensor(
                    np.stack([b[1] for b in drawn]), dtype=torch.float32, device=device
                )
                yield features[index], p, None

        self._train(batches(), len(classes), device, eps=1.0 / (2 * self.bag_size))
        return self

    def fit_bags(self, bags: Union[AbstractProtocol, Iterable[tuple[Any, Any]]]) -> "BagQuantifier":
        """Train on bags labelled by their prevalences only, with no example labels: LeQua's
        development samples (:func:`fastdl.quantification.load_lequa`), any QuaPy protocol
        or an iterable of ``(X_bag, prevalence)`` pairs. Each step takes ``batch_size`` of
        them at random (with replacement); bags of different sizes are padded and masked.
        ``protocol`` and ``bag_size`` are not used; ``mrae`` is smoothed by ``1 / (2 * mean
        bag size)``; ``classes_`` are ``0 .. n_classes - 1``.

        Returns:
            self.
        """
        pairs = list(bags() if isinstance(bags, AbstractProtocol) else bags)
        if not pairs:
            raise ValueError("bags must yield at least one (X, prevalence) pair")
        Xs = [_as_matrix(x, f"bags[{i}] X") for i, (x, _) in enumerate(pairs)]
        ps = np.stack([np.asarray(p, dtype=np.float64).reshape(-1) for _, p in pairs])
        if ps.shape[1] < 2 or (ps < -1e-6).any() or not np.allclose(ps.sum(1), 1, atol=1e-3):
            raise ValueError("bags' prevalences must be vectors of >= 2 classes on the simplex")
        if len({x.shape[1] for x in Xs}) != 1:
            raise ValueError("bags must all have the same number of features")
        self._check_params()
        device = self._resolve_device()
        self._prepare(np.concatenate(Xs), np.arange(ps.shape[1]), device)
        sizes = np.array([len(x) for x in Xs])
        width = int(sizes.max())
        padded = torch.zeros(len(Xs), width, Xs[0].shape[1])
        for i, x in enumerate(Xs):
            padded[i, : len(x)] = torch.from_numpy(x)
        padded = self._to_device(padded.view(-1, padded.shape[-1])).view(padded.shape)
        present = (
            torch.arange(width, device=device)[None, :]
            < torch.as_tensor(sizes, device=device)[:, None]
        )
        target = torch.as_tensor(ps, dtype=torch.float32, device=device)
        rng = np.random.default_rng(self.seed)
        uniform = bool((sizes == width).all())

        def batches() -> Iterator[tuple[Tensor, Tensor, Optional[Tensor]]]:
            while True:
                pick = torch.as_tensor(rng.integers(len(Xs), size=self.batch_size), device=device)
                yield padded[pick], target[pick], None if uniform else present[pick]

        self._train(batches(), ps.shape[1], device, eps=1.0 / (2 * sizes.mean()))
        return self

    def _check_params(self) -> None:
        positive_int(self.bag_size, "bag_size")
        positive_int(self.batch_size, "batch_size")
        positive_int(self.steps, "steps")
        _non_negative_float(self.lr, "lr", positive=True)
        _non_negative_float(self.weight_decay, "weight_decay")
        bag_loss(self.loss)  # raises naming `loss`
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
        ):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if self.protocol_params is not None and not isinstance(self.protocol_params, dict):
            raise ValueError(
                f"protocol_params must be a dict or None, got {self.protocol_params!r}"
            )

    def _protocol_class(self) -> type:
        if isinstance(self.protocol, str):
            if self.protocol.lower() not in PROTOCOLS:
                raise ValueError(
                    f"protocol must be one of {tuple(PROTOCOLS)} or a QuaPy "
                    f"protocol class, got {self.protocol!r}"
                )
            return PROTOCOLS[self.protocol.lower()]
        if isinstance(self.protocol, type) and issubclass(
            self.protocol, AbstractStochasticSeededProtocol
        ):
            return self.protocol
        raise ValueError(
            f"protocol must be one of {tuple(PROTOCOLS)} or a QuaPy protocol "
            f"class, got {self.protocol!r}"
        )

    def _resolve_device(self) -> torch.device:
        if self.device is None:
            use_cuda = torch.cuda.is_available() and fastdl.build_info()["cuda"]
            return torch.device("cuda" if use_cuda else "cpu")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"device must be 'cpu', 'cuda', 'cuda:N' or None, got {self.device!r}"
            ) from err
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device={self.device!r}: torch sees no CUDA device")
            if not fastdl.build_info()["cuda"]:
                raise RuntimeError(
                    f"device={self.device!r}: fastdl was built without its CUDA kernels"
                )
        elif device.type != "cpu":
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or None, got {self.device!r}")
        return device

    def _protocol_bags(
        self, data: LabelledCollection, protocol_cls: type
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless ``(row indices, prevalence)`` bags: rounds of the protocol, each with a seed
        drawn from ``seed`` and shuffled (APP yields its grid in order)."""
        rng = np.random.default_rng(self.seed)
        params = dict(self.protocol_params or {})
        params.setdefault("repeats", 1 if protocol_cls is APP else 500)
        while True:
            state = None if self.seed is None else int(rng.integers(2**31 - 1))
            protocol = protocol_cls(data, sample_size=self.bag_size, random_state=state, **params)
            drawn = list(protocol())
            if not drawn:
                raise RuntimeError(f"protocol {protocol_cls.__name__} drew no bag")
            for i in rng.permutation(len(drawn)):
                yield drawn[i]

    def _prepare(self, X: np.ndarray, classes: np.ndarray, device: torch.device) -> None:
        """Record what fit learns from the data before training: classes, features, scaling."""
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.device_ = device
        if self.standardize:
            scale = X.std(axis=0)
            scale[scale < 1e-8] = 1.0  # constant features (digits' corner pixels) stay as they are
            self.mean_ = torch.as_tensor(X.mean(axis=0), device=device)
            self.scale_ = torch.as_tensor(scale, device=device)
        else:
            self.mean_ = self.scale_ = None

    def _to_device(self, X: Union[np.ndarray, Tensor]) -> Tensor:
        x = torch.as_tensor(X, dtype=torch.float32, device=self.device_)
        if self.mean_ is not None:
            x = (x - self.mean_) / self.scale_
        return x

    def _train(
        self,
        batches: Iterator[tuple[Tensor, Tensor, Optional[Tensor]]],
        n_classes: int,
        device: torch.device,
        eps: float,
    ) -> None:
        loss_fn = bag_loss(self.loss)
        with _seeded(self.seed, device):
            model = self._build_model(self.n_features_in_, n_classes).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            # A high rate early and a settled model at the end, without a validation split.
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=self.steps, eta_min=self.lr / 10
            )
            model.train()
            losses: list[float] = []
            bar = tqdm(
                range(self.steps), desc=type(self).__name__, disable=not self.progress, leave=False
            )
            for step in bar:
                x, p, mask = next(batches)
                value = loss_fn(model(x, mask), p, eps)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                sched.step()
                losses.append(value.item())
                if step % 20 == 19:
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            bar.close()
        model.eval()
        self.model_ = model
        self.losses_ = losses

    # -- prediction -------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit first")

    def predict(self, X: Any) -> np.ndarray:
        """Class prevalences of the bag ``X`` (``(n, features)``, any n >= 1): a float64
        array ``(n_classes,)``, non-negative and summing to 1, in the order of ``classes_``."""
        return self.predict_bags([X])[0]

    def predict_bags(self, bags: Iterable[Any]) -> np.ndarray:
        """Prevalences of several bags at once, ``(n_bags, n_classes)``: bags of one size go
        through the network together; mixed sizes are padded and masked."""
        self._check_fitted()
        Xs = [_as_matrix(x) for x in bags]
        for x in Xs:
            if x.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X must have {self.n_features_in_} features (as in fit), got {x.shape[1]}"
                )
        if not Xs:
            return np.empty((0, len(self.classes_)))
        sizes = [len(x) for x in Xs]
        width = max(sizes)
        with torch.no_grad():
            if len(set(sizes)) == 1:
                x, mask = self._to_device(np.stack(Xs)), None
            else:
                x = torch.zeros(len(Xs), width, self.n_features_in_, device=self.device_)
                for i, xi in enumerate(Xs):
                    x[i, : len(xi)] = self._to_device(xi)
                mask = (
                    torch.arange(width, device=self.device_)[None, :]
                    < torch.as_tensor(sizes, device=self.device_)[:, None]
                )
            p = self.model_(x, mask)
        return p.double().cpu().numpy()
