"""Every fastdl.nn layer of the families whose CPU kernels take float16/bfloat16, after
``.bfloat16()`` / ``.half()`` as a user converts a model: outputs and every gradient (input and
parameters) judged against a float64 copy of the same module, with the torch twin in the half
dtype as the baseline for the error allowed (``assert_close_to_reference``). The Set
Transformer blocks have no torch twin: theirs is the same block with torch's LayerNorm and
the pure-torch attention of fastdl.reference in place of fastdl's; PeepholeLSTM is judged by
the fixed half tolerances. The
modules' own files test the float32/float64 behaviour (norms: test_batch_norm_modules.py,
test_layer_norm.py)."""

import copy

import pytest
import torch
from torch import nn

import fastdl.functional
import fastdl.nn as fnn
from fastdl.reference import induced_attention_reference
from helpers import DEVICES, assert_close_to_reference

FAMILY = "modules"


def _twins():
    """(id, fastdl module, torch twin or None, input shapes, kwargs of the call)."""
    torch.manual_seed(0)
    return [
        ("conv1d", fnn.Conv1d(4, 6, 3, padding=1), nn.Conv1d, [(2, 4, 11)]),
        ("conv2d", fnn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Conv2d, [(2, 4, 9, 9)]),
        ("depthwise", fnn.Conv2d(6, 6, 3, padding=1, groups=6), nn.Conv2d, [(2, 6, 8, 8)]),
        ("lstm", fnn.LSTM(5, 7, num_layers=2), nn.LSTM, [(6, 3, 5)]),
        ("gru", fnn.GRU(5, 7, bidirectional=True), nn.GRU, [(6, 3, 5)]),
        ("lstm_cell", fnn.LSTMCell(5, 7), nn.LSTMCell, [(3, 5)]),
        ("gru_cell", fnn.GRUCell(5, 7), nn.GRUCell, [(3, 5)]),
        (
            "multihead_attention",
            fnn.MultiheadAttention(16, 4, batch_first=True),
            nn.MultiheadAttention,
            [(2, 5, 16), (2, 7, 16), (2, 7, 16)],
        ),
        ("layer_norm", fnn.LayerNorm(12), nn.LayerNorm, [(3, 5, 12)]),
        ("batch_norm", fnn.BatchNorm2d(4), nn.BatchNorm2d, [(3, 4, 5, 5)]),
        ("peephole_lstm", fnn.PeepholeLSTM(5, 7), None, [(6, 3, 5)]),
        ("mab", fnn.MAB(8, 6, 16, 4, ln=True), "reference", [(2, 5, 8), (2, 7, 6)]),
        ("sab", fnn.SAB(8, 16, 4), "reference", [(2, 9, 8)]),
        ("isab", fnn.ISAB(8, 16, 4, 3, ln=True), "reference", [(2, 9, 8)]),
        ("pma", fnn.PMA(16, 4, 2), "reference", [(2, 9, 16)]),
    ]


TWINS = _twins()
# Input seeds under which every ReLU input of the block keeps its side of 0 in half precision.
SEEDS: dict[str, int] = {"sab": 3, "isab": 3}


def _torch_twin(ours, torch_type):
    """torch's module of `torch_type` with ours' configuration and weights ("reference": ours
    with torch's LayerNorm; its attention is swapped while it runs, see test_module_in_half)."""
    twin = copy.deepcopy(ours)
    if torch_type != "reference":
        twin.__class__ = torch_type  # fastdl's layers subclass torch's: same state, torch's forward
    for m in twin.modules():
        if isinstance(m, fnn.LayerNorm):
            m.__class__ = nn.LayerNorm
    return twin


def _first(y):
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("to_dtype", ["bfloat16", "half"])
@pytest.mark.parametrize("index", range(len(TWINS)), ids=[t[0] for t in TWINS])
def test_module_in_half(device, to_dtype, index, monkeypatch):
    name, module, torch_type, shapes = TWINS[index]
    ours = getattr(copy.deepcopy(module).to(device), to_dtype)()
    dtype = next(ours.parameters()).dtype
    ref = copy.deepcopy(ours).double()
    twin = _torch_twin(ours, torch_type) if torch_type is not None else None
    gen = torch.Generator().manual_seed(SEEDS.get(name, 1))
    inputs = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    # A ReLU input within rounding error of 0 (the blocks' H + relu(fc_o(H))) may take the other
    # side in half precision and move a gradient by a whole term: the comparison below judges
    # rounding alone only where ours and the float64 run take the same side everywhere, which
    # these inputs do (checked).
    relu_inputs = {"ours": [], "ref": []}
    for key, m in (("ours", ours), ("ref", ref)):
        for sub_name, sub in m.named_modules():
            if sub_name.endswith("fc_o"):
                sub.register_forward_hook(
                    lambda _m, _i, out, key=key: relu_inputs[key].append(out.detach() > 0)
                )
    runs = {"ours": ours, "ref": ref} | ({"twin": twin} if twin is not None else {})
    outs, args = {}, {}
    for key, m in runs.items():
        args[key] = [
            x.clone().to(torch.float64 if key == "ref" else dtype).requires_grad_() for x in inputs
        ]
        with monkeypatch.context() as patched:
            if key == "twin" and torch_type == "reference":
                patched.setattr(fastdl.functional, "induced_attention", induced_attention_reference)
            outs[key] = _first(m(*args[key]))
    for a, b in zip(relu_inputs["ours"], relu_inputs["ref"]):
        assert torch.equal(a, b), (
            f"{name}: a ReLU input on the other side of 0; choose other inputs"
        )
    assert outs["ours"].dtype == dtype, f"{name}: output {outs['ours'].dtype}"
    if twin is not None:
        assert outs["twin"].dtype == dtype
    grad = torch.randn(outs["ref"].shape, generator=gen).to(device)
    for key, y in outs.items():
        y.backward(grad.to(y.dtype))
    base = (lambda key_tensors: key_tensors["twin"]) if twin is not None else (lambda _: None)
    assert_close_to_reference(
        outs["ours"], outs["ref"], dtype, baseline=base(outs), name=f"{name} output"
    )
    for i in range(len(inputs)):
        grads = {key: a[i].grad for key, a in args.items()}
        assert grads["ours"].dtype == dtype
        assert_close_to_reference(
            grads["ours"],
            grads["ref"],
            dtype,
            baseline=base(grads),
            name=f"{name} grad of input {i}",
        )
    params = {key: dict(m.named_parameters()) for key, m in runs.items()}
    for pname, p in params["ours"].items():
        grads = {key: params[key][pname].grad for key in runs}
        assert grads["ours"] is not None and grads["ours"].dtype == dtype, pname
        assert_close_to_reference(
            grads["ours"], grads["ref"], dtype, baseline=base(grads), name=f"{name} grad of {pname}"
        )
