"""Converted and fastdl models survive torch.save/torch.load (whole model and state_dict),
copy.deepcopy, pickle and a torch.export round trip (export, save, load) with identical outputs."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import fastdl.models
import fastdl.nn as fnn


class LstmLM(nn.Module):
    """A plain torch language model, converted to fastdl below."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.rnn = nn.LSTM(8, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 30)

    def forward(self, tokens):
        return self.head(self.rnn(self.embed(tokens))[0])


class Encoder(nn.Module):
    """A plain torch Transformer encoder (converted below: its MultiheadAttention and LayerNorms)."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.BatchNorm1d(16)

    def forward(self, x):
        return self.norm(self.encoder(x).transpose(1, 2))


def _converted(model):
    report = fnn.convert(model)
    assert report.swapped, "nothing was converted"
    return model.eval()


MODELS = {
    "lstm_lm": (
        lambda: _converted(LstmLM()),
        lambda g: (torch.randint(0, 30, (3, 11), generator=g),),
    ),
    "transformer_encoder": (
        lambda: _converted(Encoder()),
        lambda g: (torch.randn(3, 9, 16, generator=g),),
    ),
    "lenet": (
        lambda: fastdl.models.LeNet5().eval(),
        lambda g: (torch.randn(2, 1, 32, 32, generator=g),),
    ),
    "set_transformer": (
        lambda: fastdl.models.SetTransformer(3, 1, 2, num_inds=4, dim_hidden=16, ln=True).eval(),
        lambda g: (torch.randn(2, 20, 3, generator=g),),
    ),
    "histnetq": (
        lambda: fastdl.models.HistNetQ(
            4, 3, n_bins=5, n_features=6, hidden=8, extractor_hidden=8
        ).eval(),
        lambda g: (torch.randn(2, 30, 4, generator=g),),
    ),
}


def _model(name):
    torch.manual_seed(0)
    make, inputs = MODELS[name]
    model = make()
    with torch.no_grad():  # non-trivial running statistics and parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model, inputs(torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_deepcopy_pickle(name):
    model, args = _model(name)
    with torch.no_grad():
        expected = model(*args)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    whole = torch.load(buffer, weights_only=False)
    assert type(whole) is type(model)
    assert [type(m) for m in whole.modules()] == [
        type(m) for m in model.modules()
    ]  # still fastdl layers
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh, _ = _model(name)
    with torch.no_grad():  # make sure the load below is what sets them
        for p in fresh.parameters():
            p.add_(1.0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    clones = {
        "torch.load (whole model)": whole,
        "load_state_dict": fresh,
        "copy.deepcopy": copy.deepcopy(model),
        "pickle": pickle.loads(pickle.dumps(model)),
    }
    with torch.no_grad():
        for how, clone in clones.items():
            got = clone(*args)
            assert torch.equal(got, expected), f"{how}: differs by {(got - expected).abs().max()}"


@pytest.mark.parametrize(
    "name", ["lstm_lm", "transformer_encoder", "lenet", "set_transformer", "histnetq"]
)
def test_export_round_trip(name):
    model, args = _model(name)
    with torch.no_grad():
        expected = model(*args)
    exported = torch.export.export(model, args)
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any(op.startswith("fastdl.") for op in ops), (
        f"no fastdl op in the exported graph: {sorted(ops)}"
    )
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    with torch.no_grad():
        got = exported.module()(*args)
        again = loaded.module()(*args)
    # The exported graph runs torch's own layers (Linear, Embedding) through their ATen
    # decompositions, which may round differently by an ulp; fastdl's ops are the same calls.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(again, got), "saved and loaded export differs from the export"
