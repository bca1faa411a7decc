"""fastdl's attention in Hugging Face transformers (attn_implementation="fastdl"): small
random-weight models built from config objects (no download) give the outputs and gradients
of attn_implementation="sdpa"; the masks, causality, grouped-query heads, scaling and dropout
the models ask for reach fastdl's kernel."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

import fastdl
from helpers import assert_close_to_reference
from model_helpers import FastdlOps, compare_model

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "AttentionInterface"):
    pytest.skip("transformers before 4.48 has no AttentionInterface", allow_module_level=True)

import fastdl.integrations.transformers as fastdl_hf  # noqa: E402

NAME = fastdl_hf.register()
B, L, VOCAB = 2, 12, 100
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def bert_config(**kw):
    return transformers.BertConfig(
        **{**SMALL, **NO_DROPOUT, "vocab_size": VOCAB, "max_position_embeddings": 64, **kw}
    )


def llama_config(**kw):
    return transformers.LlamaConfig(
        **{
            **SMALL,
            "vocab_size": VOCAB,
            "max_position_embeddings": 64,
            "num_key_value_heads": 2,
            **kw,
        }
    )


def vit_config(**kw):
    return transformers.ViTConfig(
        **{**SMALL, **NO_DROPOUT, "image_size": 32, "patch_size": 8, **kw}
    )


def t5_config(**kw):
    return transformers.T5Config(
        **{
            "vocab_size": VOCAB,
            "d_model": 64,
            "d_kv": 16,
            "d_ff": 128,
            "num_layers": 2,
            "num_heads": 4,
            "dropout_rate": 0.0,
            **kw,
        }
    )


def _ids():
    return torch.randint(0, VOCAB, (B, L), generator=torch.Generator().manual_seed(0))


def _padded(left: bool = False):
    """An attention mask with the second sequence padded (right, or left as decoders batch)."""
    mask = torch.ones(B, L, dtype=torch.long)
    if left:
        mask[1, :3] = 0
    else:
        mask[1, 8:] = 0
    return mask


MODELS = {  # name: (config, model class, inputs)
    "bert": (bert_config, transformers.BertModel, lambda: (_ids(), _padded())),
    "bert-unpadded": (bert_config, transformers.BertModel, lambda: (_ids(),)),
    "llama-gqa": (llama_config, transformers.LlamaModel, lambda: (_ids(), _padded(left=True))),
    "llama-gqa-causal": (llama_config, transformers.LlamaModel, lambda: (_ids(),)),
    "vit": (
        vit_config,
        transformers.ViTModel,
        lambda: (torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(0)),),
    ),
    "t5-encoder": (t5_config, transformers.T5EncoderModel, lambda: (_ids(), _padded())),
}


def _build(name: str, impl: str = "sdpa", **kw):
    config, cls, make_inputs = MODELS[name]
    torch.manual_seed(0)
    cfg = config(**kw)
    cfg._attn_implementation = impl
    return cls(cfg), make_inputs


def _to_fastdl(model):
    model.set_attn_implementation(NAME)
    assert model.config._attn_implementation == NAME
    return model, model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_sdpa(name, train, dtype):
    """Outputs (and, in training, the gradient of every parameter) of the model with fastdl's
    attention equal those with torch's SDPA; every attention layer ran fastdl's kernel."""
    model, make_inputs = _build(name)
    with FastdlOps() as ops:
        compare_model(model, _to_fastdl, make_inputs, dtype, train=train)
    assert ops.names().count("sdpa_forward") == SMALL["num_hidden_layers"]
    assert ops.names().count("sdpa_backward") == (SMALL["num_hidden_layers"] if train else 0)


def _sdpa_calls(model, *inputs):
    """The arguments of each fastdl sdpa_forward call of one forward pass, by name."""
    with FastdlOps() as ops:
        model(*inputs)
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "seed")
    return [dict(zip(names, args)) for op, args in ops.calls if op == "sdpa_forward"]


def test_arguments_reach_the_kernel():
    """What each model asks for is what fastdl's kernel gets: the padding mask (boolean),
    causal without a mask, grouped-query key/value heads without repetition, the scaling."""
    ids = _ids()
    bert, _ = _build("bert", NAME)
    call = _sdpa_calls(bert.eval(), ids, _padded())[0]
    assert call["attn_mask"].dtype == torch.bool and not call["is_causal"]
    mask = call["attn_mask"].expand(B, 4, L, L)
    assert torch.equal(mask[1, :, :, 8:], torch.zeros(4, L, 4, dtype=torch.bool))
    assert bool(mask[0].all()) and bool(mask[1, :, :, :8].all())
    assert call["scale"] == pytest.approx(16**-0.5)
    assert _sdpa_calls(bert, ids)[0]["attn_mask"] is None  # no padding: no mask

    llama, _ = _build("llama-gqa", NAME)
    call = _sdpa_calls(llama.eval(), ids)[0]
    assert call["is_causal"] and call["attn_mask"] is None
    assert call["query"].shape[1] == 4 and call["key"].shape[1] == call["value"].shape[1] == 2
    call = _sdpa_calls(llama, ids, _padded(left=True))[0]
    assert not call["is_causal"] and call["attn_mask"].dtype == torch.bool
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    assert torch.equal(call["attn_mask"][0, 0], causal)
    assert torch.equal(call["attn_mask"][1, 0, 3:, 3:], causal[3:, 3:])
    assert not call["attn_mask"][1, 0, :, :3].any()

    t5, _ = _build("t5-encoder", NAME)
    call = _sdpa_calls(t5.eval(), ids)[0]
    assert call["attn_mask"].dtype == torch.float32 and call["scale"] == 1.0  # T5: bias, no scale


def test_dropout_in_training():
    """Attention dropout reaches the kernel in training (and is 0 in evaluation), draws from
    torch's generator (manual_seed reproduces it) and changes the output."""
    model, _ = _build("bert", NAME, attention_probs_dropout_prob=0.3)
    ids = _ids()
    assert [c["dropout_p"] for c in _sdpa_calls(model.eval(), ids)] == [0.0, 0.0]
    model.train()
    assert [c["dropout_p"] for c in _sdpa_calls(model, ids)] == [0.3, 0.3]
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(model(ids).last_hidden_state)
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    with torch.no_grad():
        assert not torch.allclose(outs[0], model.eval()(ids).last_hidden_state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_on_cpu_runs_fastdl(dtype):
    """A model in float16/bfloat16 on the CPU: fastdl's attention answers every call (its CPU
    kernels take half inputs), within twice torch's own error of the float64 model."""
    theirs, make_inputs = _build("bert")
    ours, _ = _build("bert", NAME)
    ref = copy.deepcopy(theirs).to(dtype).double().eval()
    theirs, ours = theirs.to(dtype).eval(), ours.to(dtype).eval()
    fastdl.reset_patch_stats()
    with torch.no_grad():
        expected = theirs(*make_inputs()).last_hidden_state
        got = ours(*make_inputs()).last_hidden_state
        exact = ref(*make_inputs()).last_hidden_state
    assert got.dtype == expected.dtype == dtype
    assert_close_to_reference(got, exact, dtype, baseline=expected)
    stats = fastdl.patch_stats()
    assert stats.fastdl == {"scaled_dot_product_attention": 2} and stats.fallback == {}


def test_register_is_idempotent_and_named():
    assert fastdl_hf.register() == NAME == "fastdl"
    assert transformers.AttentionInterface._global_mapping[NAME] is fastdl_hf.attention_forward
    assert fastdl_hf.register("fastdl_custom") == "fastdl_custom"
    model, make_inputs = _build("vit", "fastdl_custom")
    with FastdlOps() as ops:
        model(*make_inputs())
    assert ops.names().count("sdpa_forward") == 2


def test_softcap_is_refused():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="softcap"):
        fastdl_hf.attention_forward(torch.nn.Module(), q, q, q, None, softcap=30.0)


def test_register_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises
    with pytest.raises(ImportError, match="fastdl\\[transformers\\]"):
        fastdl_hf.register()
