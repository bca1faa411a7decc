"""A character-level language model: a plain torch model (embedding, LSTM or GRU, linear
head) moved onto fastdl's fused recurrent kernels by ``fastdl.nn.convert``, then trained to
predict the next character of a short built-in text.

Run::

    python examples/char_lm.py                 # LSTM, 300 steps, then a sample
    python examples/char_lm.py --cell gru --steps 100

``run(...)`` does the same and returns the losses (the tests call it).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fastdl.nn as fnn

TEXT = (
    "Recurrent networks read a sequence one step at a time and carry a state from step to "
    "step. The long short-term memory adds a cell state guarded by input, forget and output "
    "gates, so that gradients can flow across many steps; the gated recurrent unit merges the "
    "gates into an update and a reset gate and keeps a single state. Both are trained by "
    "backpropagation through time. "
)


class CharModel(nn.Module):
    """Embedding -> multi-layer LSTM/GRU (batch_first) -> linear head over the vocabulary."""

    def __init__(
        self,
        vocab: int,
        hidden: int = 128,
        layers: int = 2,
        cell: str = "lstm",
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        rnn_type = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_type(32, hidden, num_layers=layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, state=None):
        out, state = self.rnn(self.embed(tokens), state)
        return self.head(out), state


def batches(data: torch.Tensor, batch: int, length: int, generator: torch.Generator):
    """Random (input, target) windows of the encoded text."""
    while True:
        starts = torch.randint(0, len(data) - length - 1, (batch,), generator=generator)
        windows = torch.stack([data[s : s + length + 1] for s in starts.tolist()])
        yield windows[:, :-1], windows[:, 1:]


def sample(model: CharModel, chars: list[str], start: str, length: int) -> str:
    """Greedy continuation of ``start``."""
    index = {c: i for i, c in enumerate(chars)}
    model.eval()
    tokens = torch.tensor([[index[c] for c in start]])
    out, state = model(tokens)
    text = start
    with torch.no_grad():
        for _ in range(length):
            nxt = out[0, -1].argmax().item()
            text += chars[nxt]
            out, state = model(torch.tensor([[nxt]]), state)
    model.train()
    return text


def run(
    steps: int = 300,
    cell: str = "lstm",
    hidden: int = 128,
    batch: int = 16,
    length: int = 48,
    lr: float = 3e-3,
    seed: int = 0,
    verbose: bool = False,
) -> dict:
    """Build the torch model, convert it to fastdl, train it; returns the losses and the report."""
    torch.manual_seed(seed)
    chars = sorted(set(TEXT))
    data = torch.tensor([chars.index(c) for c in TEXT])
    model = CharModel(len(chars), hidden=hidden, cell=cell)
    report = fnn.convert(model)
    if verbose:
        print(report)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    stream = batches(data, batch, length, torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for step in range(steps):
        x, y = next(stream)
        logits, _ = model(x)
        loss = loss_fn(logits.reshape(-1, len(chars)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if verbose and (step % 50 == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - start:.1f} s)")
    result = {"losses": losses, "report": report, "model": model, "chars": chars}
    if verbose:
        print("sample:", sample(model, chars, "The ", 80))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    run(steps=args.steps, cell=args.cell, hidden=args.hidden, verbose=True)


if __name__ == "__main__":
    main()
