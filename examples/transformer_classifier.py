"""A small Transformer encoder sequence classifier trained with fastdl's attention.

The task: sequences of random tokens from a vocabulary of 16; the label says which of two
marker tokens (1 or 2) occurs more often in the sequence. Solving it needs attention across
positions (a bag-of-tokens count), with padded sequences of different lengths.

The model is plain torch — an embedding, learned positions, ``torch.nn.TransformerEncoder``
layers, masked mean pooling and a linear head — converted by :func:`fastdl.nn.convert`, which
swaps every ``nn.MultiheadAttention`` and ``nn.LayerNorm`` for fastdl's (same parameters), so
the attention runs in fastdl's fused kernel (padding as ``src_key_padding_mask``).

Run::

    python examples/transformer_classifier.py            # ~1 minute on a 2-core CPU
    python examples/transformer_classifier.py --steps 50

``run(...)`` trains and returns a dict of results (the tests call it).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fastdl

VOCAB, MARKERS = 16, (1, 2)


class TransformerClassifier(nn.Module):
    """Embedding + positions -> TransformerEncoder -> masked mean pooling -> linear."""

    def __init__(
        self,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 2,
        max_len: int = 64,
        classes: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.positions = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.positions[: tokens.shape[1]]
        x = self.encoder(x, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(x.dtype)
        return self.head((x * keep).sum(1) / keep.sum(1))


def make_batch(batch: int, max_len: int, generator: torch.Generator):
    """Random sequences (lengths max_len/2..max_len, padded), their padding masks and labels."""
    lengths = torch.randint(max_len // 2, max_len + 1, (batch,), generator=generator)
    tokens = torch.randint(3, VOCAB, (batch, max_len), generator=generator)
    # Sprinkle the two markers with different rates per sequence.
    rates = torch.rand(batch, 2, generator=generator) * 0.3
    draw = torch.rand(batch, max_len, generator=generator)
    tokens[draw < rates[:, :1]] = MARKERS[0]
    tokens[(draw >= rates[:, :1]) & (draw < rates[:, :1] + rates[:, 1:])] = MARKERS[1]
    padding = torch.arange(max_len)[None, :] >= lengths[:, None]
    tokens[padding] = 0
    counts = torch.stack([((tokens == m) & ~padding).sum(1) for m in MARKERS], 1)
    return tokens, padding, (counts[:, 1] > counts[:, 0]).long()


def run(
    steps: int = 150, batch: int = 32, max_len: int = 32, seed: int = 0, log_every: int = 0
) -> dict:
    """Trains the converted classifier; returns losses, accuracy and the conversion report."""
    torch.manual_seed(seed)
    model = TransformerClassifier(max_len=max_len)
    report = fastdl.nn.convert(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        tokens, padding, labels = make_batch(batch, max_len, generator)
        loss = nn.functional.cross_entropy(model(tokens, padding), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(
                f"step {step + 1:4d}/{steps}  loss {sum(losses[-log_every:]) / log_every:.4f}  "
                f"({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    model.eval()
    with torch.no_grad():
        tokens, padding, labels = make_batch(512, max_len, generator)
        accuracy = (model(tokens, padding).argmax(1) == labels).float().mean().item()
    return {"losses": losses, "accuracy": accuracy, "report": report, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=32)
    args = parser.parse_args()
    result = run(args.steps, args.batch, args.max_len, log_every=25)
    print(result["report"])
    print(f"test accuracy {result['accuracy']:.3f} (chance 0.5)")


if __name__ == "__main__":
    main()
