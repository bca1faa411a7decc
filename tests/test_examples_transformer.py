"""The Transformer classifier example: converted model matches torch, and it learns."""

import copy
import importlib.util
from pathlib import Path

import torch

import fastdl

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "transformer_classifier.py"


def _example():
    spec = importlib.util.spec_from_file_location("transformer_classifier_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converted_model_matches_torch():
    ex = _example()
    torch.manual_seed(0)
    ref = ex.TransformerClassifier(max_len=20).double()
    ours = copy.deepcopy(ref)
    report = fastdl.nn.convert(ours)
    swapped = {new for _, _, new in report.swapped}
    assert {"MultiheadAttention", "LayerNorm"} <= swapped
    tokens, padding, labels = ex.make_batch(6, 20, torch.Generator().manual_seed(1))
    outs = []
    for model in (ours, ref):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(tokens, padding), labels)
        loss.backward()
        outs.append(loss)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, p), (_, p_ref) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=lambda m: f"{name}: {m}")


def test_trains_loss_goes_down():
    result = _example().run(steps=60, batch=32, max_len=24)
    losses = result["losses"]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, f"loss did not go down: {first:.3f} -> {last:.3f}"
    assert result["accuracy"] > 0.6
