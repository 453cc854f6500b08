"""Tests for llmcourse.memory: the calculator's rules of thumb, and the calculator against memory
measured on real training steps (our GPT, and a Llama-architecture model from Hugging Face)."""
from __future__ import annotations

import pytest
import torch

from llmcourse import memory as Mem
from llmcourse.transformer import GPT, GPTConfig


def test_serving_memory_rules_of_thumb():
    assert Mem.serving_memory(7e9, "fp16") == 14e9
    assert Mem.serving_memory(7e9, torch.bfloat16) == 14e9
    assert Mem.serving_memory(7e9, "int4") == 3.5e9
    assert Mem.serving_memory(1e9, "fp32", kv_cache=5.0) == 4e9 + 5
    with pytest.raises(ValueError, match="dtype must be"):
        Mem.serving_memory(1, "fp12")
    with pytest.raises(ValueError, match="non-negative"):
        Mem.serving_memory(-1)


def test_kv_cache_bytes_llama2_70b():
    # Llama-2-70B: 80 layers, 8 KV heads of 128, 4096 tokens, fp16 -> 1.34 GB per sequence
    assert Mem.kv_cache_bytes(80, 8, 128, 4096, 1, "fp16") == 2 * 80 * 8 * 128 * 4096 * 2
    with pytest.raises(ValueError, match="seq_len must be non-negative"):
        Mem.kv_cache_bytes(1, 1, 1, -1)


def test_training_memory_sixteen_bytes_per_parameter():
    full = Mem.training_memory(1e9)  # fp32 weights, fp32 grads, AdamW
    assert (full.weights, full.gradients, full.optimizer, full.total) == (4e9, 4e9, 8e9, 16e9)
    mixed = Mem.training_memory(1e9, weight_dtype="bf16", master_weights=True)
    assert mixed.total == 16e9 and mixed.weights == 2e9  # ZeRO's 2 + 2 + 12
    lora = Mem.training_memory(1e9, trainable_params=1e6, weight_dtype="bf16")
    assert lora.gradients == 2e6 and lora.optimizer == 8e6
    assert Mem.training_memory(10, optimizer="sgd").optimizer == 0
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Mem.training_memory(10, optimizer="lion")
    with pytest.raises(ValueError, match="trainable_params"):
        Mem.training_memory(10, trainable_params=11)


def test_activation_memory_scales_linearly_and_with_scores_quadratically():
    kw = dict(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=100)
    a1 = Mem.activation_memory(1, 128, **kw)
    assert Mem.activation_memory(2, 128, **kw) == 2 * a1
    assert Mem.activation_memory(1, 256, **kw) == 2 * a1
    s1 = Mem.activation_memory(1, 128, attention_scores=True, **kw) - a1
    s2 = Mem.activation_memory(1, 256, attention_scores=True, **kw) - Mem.activation_memory(1, 256, **kw)
    assert s2 == 4 * s1  # T x T scores per head: quadratic in T
    with pytest.raises(ValueError, match="norm must be"):
        Mem.activation_memory(1, 1, norm="batchnorm", **kw)


@pytest.mark.parametrize("batch,length", [(1, 1), (3, 17), (4, 64)])
def test_calculator_matches_measured_gpt(batch, length):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=97, block_size=64, n_layer=3, n_head=4, d_model=64)
    model = GPT(config)
    idx = torch.randint(0, 97, (batch, length))
    optimizer = torch.optim.AdamW(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    measured = Mem.measure_training_memory(model, lambda: model(idx, idx).loss, optimizer)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # a real step happened
    n = model.num_parameters()
    predicted = Mem.training_memory(n, Mem.activation_memory(batch, length, 64, 3, 4, 256, 97, gated=False,
                                                             norm="layernorm"))
    assert measured.weights == predicted.weights == 4 * n
    assert measured.gradients == predicted.gradients
    assert measured.optimizer == predicted.optimizer
    # activations: the estimate leaves out small per-row statistics and the causal mask
    assert abs(measured.activations / predicted.activations - 1) < 0.12


def test_calculator_matches_measured_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=211, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                      attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).train()
    idx = torch.randint(0, 211, (2, 40))
    optimizer = torch.optim.AdamW(model.parameters())
    measured = Mem.measure_training_memory(model, lambda: model(input_ids=idx, labels=idx).loss, optimizer)
    predicted = Mem.activation_memory(2, 40, 48, 2, 6, 128, 211, n_kv_heads=2, gated=True, norm="rmsnorm")
    assert abs(measured.activations / predicted - 1) < 0.1
    assert measured.optimizer == 2 * measured.weights


def test_tensor_bytes_and_format():
    a = torch.zeros(10)
    assert Mem.tensor_bytes([a, a[:5], None, torch.zeros(3, dtype=torch.float16)]) == 46
    assert Mem.format_bytes(14e9) == "14.0 GB" and Mem.format_bytes(2.5e6) == "2.50 MB"
    assert Mem.format_bytes(12) == "12 B"
