"""LoRA from scratch (llmcourse.lora): initialisation, scaling, freezing, merging, and equivalence with
peft's LoraConfig given identical weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmcourse import lora
from llmcourse.lora import LoRAConfig, LoRALinear, inject_lora

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")])
DEVICES = ["cpu", CUDA]


def tiny_llama(seed: int = 0, vocab: int = 97):
    """A random 2-layer Llama (GQA) from a config: no download."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def randomize_lora(model: nn.Module, seed: int = 1) -> None:
    """Give every B a non-zero value so that the adapter changes the output (B = 0 would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)


# ---------------------------------------------------------------------------------------------------- config
def test_config_defaults_and_scaling():
    c = LoRAConfig()
    assert (c.r, c.alpha, c.dropout, c.target_modules) == (8, 16, 0.0, ("q_proj", "v_proj"))
    assert c.scaling == 2.0
    assert LoRAConfig(target_modules="q_proj").target_modules == ("q_proj",)


@pytest.mark.parametrize("kwargs, match", [
    ({"r": 0}, "r must be"), ({"r": 2.5}, "r must be"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout"),
    ({"target_modules": ()}, "target_modules"), ({"init": "zeros"}, "init"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRAConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------- layer
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1, 7), (2, 5, 7), (3, 7)])
def test_layer_starts_as_base_and_scaling(device, shape):
    torch.manual_seed(0)
    base = nn.Linear(7, 5).to(device)
    layer = LoRALinear(base, r=3, alpha=6)
    assert layer.lora_A.weight.shape == (3, 7) and layer.lora_B.weight.shape == (5, 3)
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and torch.count_nonzero(layer.lora_A.weight) > 0
    x = torch.randn(*shape, device=device)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)  # B = 0: exactly the base
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    out = layer(x)
    assert not torch.allclose(out, base(x))
    expected = base(x) + (6 / 3) * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_kaiming_init_bounds_and_gaussian():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 32), r=4)
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on fan_in 64, as nn.Linear
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.abs().max() > 0.8 * bound
    g = LoRALinear(nn.Linear(512, 32), r=4, init="gaussian")
    assert abs(g.lora_A.weight.std().item() - 1 / 4) < 0.02


def test_gradients_reach_only_the_adapter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    names = inject_lora(model, LoRAConfig(r=2, target_modules=("0",)))
    assert names == ["0"]
    model(torch.randn(4, 6)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["0.lora_B.weight"] is not None and grads["0.lora_B.weight"].abs().sum() > 0
    # B = 0 at init: A receives a zero gradient at the first step (but is trainable)
    assert grads["0.lora_A.weight"] is not None and grads["0.lora_A.weight"].abs().sum() == 0
    frozen = [n for n in grads if "lora_" not in n]
    assert frozen and all(grads[n] is None for n in frozen)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 16), r=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(8, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


class FakeQuantLinear(nn.Module):
    """A linear-like layer without .weight (stands for a 4-bit layer): int8 codes and a scale."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        w = torch.randn(out_features, in_features)
        self.scale = w.abs().max() / 127
        self.register_buffer("codes", torch.round(w / self.scale).to(torch.int8))

    def forward(self, x):
        return x @ (self.codes.float() * self.scale).T


def test_quantized_base_works_but_cannot_merge():
    torch.manual_seed(0)
    layer = LoRALinear(FakeQuantLinear(8, 4), r=2)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 8)
    out = layer(x)
    torch.testing.assert_close(out, layer.base(x) + layer.delta(x))
    with pytest.raises(ValueError, match="merge needs a base"):
        layer.merge()
    with pytest.raises(ValueError, match="in_features"):
        LoRALinear(nn.ReLU(), r=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-5), (torch.bfloat16, 2e-2)])
def test_merge_unmerge(device, dtype, tol):
    torch.manual_seed(0)
    base = nn.Linear(32, 24).to(device=device, dtype=dtype)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer.lora_A.weight.dtype == torch.float32  # adapter kept in fp32 whatever the base dtype
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(5, 32, device=device, dtype=dtype)
    unmerged = layer(x)
    assert unmerged.dtype == dtype
    layer.merge()
    assert layer.merged and not torch.equal(base.weight, w0)
    torch.testing.assert_close(layer(x), unmerged, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(base.weight, w0, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()


def test_low_rank_approximation_eckart_young():
    torch.manual_seed(0)
    W = torch.randn(12, 9)
    S = torch.linalg.svdvals(W)
    for r in (0, 1, 4, 9):
        err = torch.linalg.matrix_norm(W - lora.low_rank_approximation(W, r))
        torch.testing.assert_close(err, S[r:].square().sum().sqrt(), rtol=1e-4, atol=1e-5)
        assert torch.linalg.matrix_rank(lora.low_rank_approximation(W, r)) == r
    with pytest.raises(ValueError, match="r must be"):
        lora.low_rank_approximation(W, 10)


# ---------------------------------------------------------------------------------------------------- model
def test_inject_counts_and_names():
    model = tiny_llama()
    n_total = sum(p.numel() for p in model.parameters())
    names = inject_lora(model, LoRAConfig(r=4))
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # q: 48 -> 48, v: 48 -> 16 (2 KV heads of 8): r (in + out) each
    assert trainable == 2 * 4 * ((48 + 48) + (48 + 16)) == lora.lora_parameter_count([(48, 48), (16, 48)] * 2, 4)
    assert sum(p.numel() for p in model.parameters()) == n_total + trainable
    assert set(lora.lora_state_dict(model)) == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    with pytest.raises(ValueError, match="already has LoRA"):
        inject_lora(model, LoRAConfig())
    with pytest.raises(ValueError, match="no module matches"):
        inject_lora(tiny_llama(), LoRAConfig(target_modules=("c_attn",)))


def _peft_lora(model, config: LoRAConfig):
    from peft import LoraConfig, get_peft_model

    from llmcourse.utils import quiet

    quiet()
    return get_peft_model(model, LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                            target_modules=list(config.target_modules)))


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                              "up_proj", "down_proj")])
def test_equivalent_to_peft(targets):
    config = LoRAConfig(r=4, alpha=8, target_modules=targets)
    ours = tiny_llama()
    inject_lora(ours, config)
    randomize_lora(ours)
    theirs = _peft_lora(tiny_llama(), config)
    # Same trainable parameter count as peft
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == \
        sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    # Our adapter loads into peft under peft's own key names
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    peft_keys = set(get_peft_model_state_dict(theirs))
    ours_sd = lora.to_peft_state_dict(lora.lora_state_dict(ours))
    assert set(ours_sd) == peft_keys
    set_peft_model_state_dict(theirs, ours_sd)
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        out_ours, out_theirs = ours(ids).logits, theirs(ids).logits
        base = tiny_llama()(ids).logits
    assert not torch.allclose(out_ours, base, atol=1e-3)  # the adapter does change the output
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-5)
    # ... and back: peft's adapter loads into ours
    back = lora.from_peft_state_dict(get_peft_model_state_dict(theirs))
    fresh = tiny_llama()
    inject_lora(fresh, config)
    lora.load_lora_state_dict(fresh, back)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, out_theirs, rtol=1e-5, atol=1e-5)


def test_training_step_matches_peft():
    """Same weights, same batch, one SGD step: identical gradients and updated adapters."""
    config = LoRAConfig(r=2, alpha=4)
    ours, theirs = tiny_llama(), _peft_lora(tiny_llama(), config)
    inject_lora(ours, config)
    randomize_lora(ours)
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    set_peft_model_state_dict(theirs, lora.to_peft_state_dict(lora.lora_state_dict(ours)))
    ids = torch.randint(0, 97, (3, 9))
    for m in (ours, theirs):
        m.train()
        m(ids, labels=ids).loss.backward()
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5).step()
    after = lora.from_peft_state_dict(get_peft_model_state_dict(theirs))
    for k, v in lora.lora_state_dict(ours).items():
        torch.testing.assert_close(v, after[k], rtol=1e-5, atol=1e-6)


def test_merge_whole_model_keeps_outputs():
    model = tiny_llama()
    inject_lora(model, LoRAConfig(r=4, target_modules=("q_proj", "v_proj", "down_proj")))
    randomize_lora(model)
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        before = model(ids).logits
        assert lora.merge_lora(model) == 6
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)
        assert lora.unmerge_lora(model) == 6
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)


def test_load_lora_state_dict_rejects_partial():
    model = tiny_llama()
    inject_lora(model, LoRAConfig(r=2))
    sd = lora.lora_state_dict(model)
    sd.pop(next(iter(sd)))
    with pytest.raises(ValueError, match="missing"):
        lora.load_lora_state_dict(model, sd)
    with pytest.raises(ValueError, match="not a peft adapter key"):
        lora.from_peft_state_dict({"model.x.lora_A.weight": torch.zeros(1)})
