"""Soak test: train fastdl's example models for many steps and check that resident memory stays
flat after warm-up and that no loss or parameter becomes NaN.

Models: an LSTM language model and an nn.TransformerEncoder (both plain torch models moved onto
fastdl by ``fastdl.nn.convert``), SetTransformer, HistNetQ and LeNet5 (fastdl.models). Each
trains with Adam on fixed-shape synthetic batches (new values every step, with masks and
dropout where the model has them). After ``--warmup`` steps the resident set size (RSS) of
the process is sampled every step; the model fails if the largest RSS of the last quarter of
the run exceeds the largest of the first quarter by more than ``--bound-mib`` (a leak of even
a few KiB per step shows over thousands of steps), or if a loss or parameter is not finite.

    python scripts/soak.py                       # every model, 2000 steps each (about half an hour on 2 cores)
    python scripts/soak.py --steps 200 --models lenet,lstm_lm
    python scripts/soak.py --threads 3           # also from 3 Python threads at once

Exit status 0 when every model passed; a table of the RSS figures either way.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
from typing import Callable

import torch
from torch import nn

import fastdl.models
import fastdl.nn as fnn

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class LstmLM(nn.Module):
    """Embedding -> 2-layer LSTM -> vocabulary head (a char-level LM's shape)."""

    def __init__(self, vocab: int = 40, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, 24)
        self.rnn = nn.LSTM(24, hidden, num_layers=2, batch_first=True, dropout=0.1)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        return self.head(self.rnn(self.embed(tokens))[0])


class Encoder(nn.Module):
    """A converted nn.TransformerEncoder classifier over token sequences with padding."""

    def __init__(self, vocab: int = 50, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, tokens, padding):
        h = self.encoder(self.embed(tokens), src_key_padding_mask=padding)
        return self.head(h.masked_fill(padding[..., None], 0).sum(1))


def _models() -> dict[str, Callable[[torch.Generator], tuple[nn.Module, Callable]]]:
    """name -> (model, step_loss(model, generator) -> loss)."""

    def lstm_lm():
        model = LstmLM()
        fnn.convert(model)

        def loss(m, g):
            tokens = torch.randint(0, 40, (8, 33), generator=g)
            logits = m(tokens[:, :-1])
            return nn.functional.cross_entropy(logits.reshape(-1, 40), tokens[:, 1:].reshape(-1))

        return model, loss

    def transformer_encoder():
        model = Encoder()
        fnn.convert(model)

        def loss(m, g):
            tokens = torch.randint(0, 50, (8, 20), generator=g)
            lengths = torch.randint(5, 21, (8,), generator=g)
            padding = torch.arange(20)[None] >= lengths[:, None]
            return nn.functional.cross_entropy(
                m(tokens, padding), torch.randint(0, 3, (8,), generator=g)
            )

        return model, loss

    def set_transformer():
        model = fastdl.models.SetTransformer(
            3, 1, 1, num_inds=8, dim_hidden=32, num_heads=4, ln=True
        )

        def loss(m, g):
            x = torch.randn(8, 40, 3, generator=g)
            mask = torch.rand(8, 40, generator=g) < 0.9
            target = x.masked_fill(~mask[..., None], -1e9).amax(dim=(1, 2))[:, None, None]
            return nn.functional.mse_loss(m(x, mask), target)

        return model, loss

    def histnetq():
        model = fastdl.models.HistNetQ(
            6, 3, n_bins=8, n_features=16, hidden=32, extractor_hidden=32, dropout=0.1
        )

        def loss(m, g):
            x = torch.randn(4, 100, 6, generator=g)
            prevalence = torch.softmax(torch.randn(4, 3, generator=g), -1)
            return (m(x) - prevalence).abs().mean()

        return model, loss

    def lenet():
        model = fastdl.models.LeNet5()

        def loss(m, g):
            x = torch.randn(8, 1, 32, 32, generator=g)
            return nn.functional.cross_entropy(m(x), torch.randint(0, 10, (8,), generator=g))

        return model, loss

    return {
        "lstm_lm": lstm_lm,
        "transformer_encoder": transformer_encoder,
        "set_transformer": set_transformer,
        "histnetq": histnetq,
        "lenet": lenet,
    }


def soak(
    name: str, steps: int, warmup: int, bound_mib: float, threads: int = 1, leak_kib: int = 0
) -> dict:
    """Train model ``name`` for ``steps`` steps (in ``threads`` Python threads at once, each its
    own model copy) and return its figures and whether it passed. ``leak_kib``: hold that much
    more memory every step (the test that the soak catches a leak)."""
    torch.manual_seed(0)
    build = _models()[name]
    runs = [build() for _ in range(threads)]
    samples: list[float] = []
    bad: list[str] = []
    barrier = threading.Barrier(threads)
    leaked: list[bytearray] = []

    def train(index: int):
        model, step_loss = runs[index]
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(index)
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = step_loss(model, g)
            if not math.isfinite(loss.item()):
                bad.append(f"thread {index} step {step}: loss {loss.item()}")
                return
            loss.backward()
            opt.step()
            if leak_kib:
                leaked.append(bytearray(b"x" * (leak_kib * 1024)))
            if threads > 1:
                barrier.wait()
            if index == 0 and step >= warmup:
                samples.append(rss_mib())
        for pname, p in model.named_parameters():
            if not torch.isfinite(p).all():
                bad.append(f"thread {index}: parameter {pname} not finite")

    workers = [threading.Thread(target=train, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    quarter = max(1, len(samples) // 4)
    first, last = max(samples[:quarter], default=0.0), max(samples[-quarter:], default=0.0)
    growth = last - first
    if len(samples) < 8:
        bad.append(f"only {len(samples)} RSS samples after warm-up: run more steps")
    if growth > bound_mib:
        bad.append(f"RSS grew {growth:.1f} MiB after warm-up (bound {bound_mib} MiB)")
    return {
        "model": name,
        "steps": steps,
        "threads": threads,
        "rss_first_mib": first,
        "rss_last_mib": last,
        "growth_mib": growth,
        "ok": not bad,
        "problems": bad,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per model")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="steps before RSS is sampled (default steps/5, at least 20)",
    )
    parser.add_argument(
        "--bound-mib", type=float, default=8.0, help="allowed RSS growth after warm-up"
    )
    parser.add_argument(
        "--models", default="all", help=f"comma-separated, of {', '.join(_models())}"
    )
    parser.add_argument("--threads", type=int, default=1, help="Python threads training at once")
    parser.add_argument("--num-threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--leak-kib-per-step", type=int, default=0, help=argparse.SUPPRESS
    )  # self-test
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    names = list(_models()) if args.models == "all" else args.models.split(",")
    unknown = set(names) - set(_models())
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {', '.join(_models())}")
    warmup = args.warmup if args.warmup is not None else max(20, args.steps // 5)
    failed = 0
    print(
        f"{'model':22} {'steps':>6} {'RSS first MiB':>14} {'RSS last MiB':>13} {'growth':>8}  result"
    )
    for name in names:
        r = soak(name, args.steps, warmup, args.bound_mib, args.threads, args.leak_kib_per_step)
        failed += not r["ok"]
        print(
            f"{name:22} {r['steps']:6d} {r['rss_first_mib']:14.1f} {r['rss_last_mib']:13.1f} "
            f"{r['growth_mib']:8.2f}  {'ok' if r['ok'] else 'FAIL: ' + '; '.join(r['problems'])}",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
