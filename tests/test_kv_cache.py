"""llmcourse.kv_cache: cached decoding equals the uncached model, the cache's bookkeeping, latency
measurement (behaviour only; timings belong to `make bench`) and the KV-cache memory calculator."""

from __future__ import annotations

import pytest
import torch

from llmcourse import kv_cache as kc
from llmcourse.transformer import GPT, GPTConfig

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[CUDA, pytest.mark.gpu])]


def tiny(pos="learned", n_kv_heads=None, norm="pre", device="cpu", seed=0, **kw):
    torch.manual_seed(seed)
    config = GPTConfig.tiny(pos_encoding=pos, n_kv_heads=n_kv_heads, norm=norm, block_size=48, **kw)
    return GPT(config).to(device).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "alibi", "none"])
@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_cached_logits_equal_full_forward(pos, n_kv_heads, device):
    model = tiny(pos, n_kv_heads, device=device)
    idx = torch.randint(model.config.vocab_size, (2, 23), device=device)
    full = model(idx).logits
    cache = kc.KVCache.for_model(model, batch_size=2)
    pieces = [kc.gpt_forward_cached(model, idx[:, :9], cache)]  # prefill
    pieces += [kc.gpt_forward_cached(model, idx[:, t:t + 1], cache) for t in range(9, 20)]  # decode
    pieces.append(kc.gpt_forward_cached(model, idx[:, 20:], cache))  # a chunk again
    assert cache.length == 23
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_post_norm_and_no_residual_blocks():
    for kw in ({"norm": "post"}, {"residual": False}):
        model = tiny(**kw)
        idx = torch.randint(model.config.vocab_size, (1, 12))
        cache = kc.KVCache.for_model(model)
        logits = torch.cat([kc.gpt_forward_cached(model, idx[:, :5], cache),
                            kc.gpt_forward_cached(model, idx[:, 5:], cache)], dim=1)
        torch.testing.assert_close(logits, model(idx).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos", ["learned", "alibi"])
def test_generate_cached_equals_generate(pos):
    model = tiny(pos, n_kv_heads=2)
    prompt = torch.randint(model.config.vocab_size, (3, 5))
    greedy = model.generate(prompt, 30, greedy=True)
    torch.testing.assert_close(kc.generate_cached(model, prompt, 30, greedy=True), greedy)
    sampled = model.generate(prompt, 30, top_k=10, generator=torch.Generator().manual_seed(3))
    assert len(sampled[:, 5:].unique()) > 10  # a varied continuation: equality below is not trivial
    torch.testing.assert_close(
        kc.generate_cached(model, prompt, 30, top_k=10, generator=torch.Generator().manual_seed(3)), sampled)
    assert kc.generate_cached(model, prompt, 0).shape == prompt.shape


def test_cache_errors_and_bookkeeping():
    model = tiny("learned")
    cache = kc.KVCache.for_model(model, batch_size=1, max_len=10)
    assert cache.nbytes == kc.kv_cache_bytes(2, 4, 8, 10, 1, bytes_per_value=4)
    kc.gpt_forward_cached(model, torch.zeros(1, 8, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="holds 10 positions"):
        kc.gpt_forward_cached(model, torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="B=1"):
        kc.gpt_forward_cached(model, torch.zeros(2, 1, dtype=torch.long), cache)
    cache.reset()
    assert cache.length == 0
    with pytest.raises(ValueError, match="exceed block_size"):
        kc.generate_cached(model, torch.zeros(1, 40, dtype=torch.long), 20)
    with pytest.raises(ValueError, match="KV=4"):
        cache.update(0, torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))


def test_prefill_does_not_change_earlier_positions():
    """Causality through the cache: later tokens never change the logits of earlier ones."""
    model = tiny("alibi")
    idx = torch.randint(model.config.vocab_size, (1, 16))
    other = idx.clone()
    other[:, 10:] = (other[:, 10:] + 1) % model.config.vocab_size
    a = kc.gpt_forward_cached(model, idx, kc.KVCache.for_model(model))
    b = kc.gpt_forward_cached(model, other, kc.KVCache.for_model(model))
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("use_cache", [True, False])
def test_per_token_latency_reports_every_position(use_cache):
    model = tiny("learned")
    profile = kc.per_token_latency(model, [20, 4, 8], use_cache=use_cache, repeat=2, window=4)
    assert profile.positions == [4, 8, 20] and profile.use_cache is use_cache
    assert len(profile.seconds) == 3 and all(s > 0 for s in profile.seconds)
    with pytest.raises(ValueError, match="exceed block_size"):
        kc.per_token_latency(model, [46], use_cache=use_cache, window=4)


def test_kv_cache_bytes_at_llama2_70b_scale():
    spec = kc.LLAMA2_70B
    assert spec.kind == "GQA"
    assert spec.bytes_per_token() == 2 * 80 * 8 * 128 * 2 == 327_680  # 320 KiB per token in fp16
    assert spec.nbytes() == 327_680 * 4096  # 1.25 GiB for one full 4096-token context
    rows = kc.kv_cache_table(spec, seq_len=4096, batch_size=8)
    assert [r.kind for r in rows] == ["MHA", "GQA", "MQA"]
    assert [r.n_kv_heads for r in rows] == [64, 8, 1]
    assert rows[0].total_bytes == 8 * rows[1].total_bytes == 64 * rows[2].total_bytes
    assert rows[1].total_bytes == 8 * 4096 * 327_680


def test_smollm2_spec_and_hf_config():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, intermediate_size=1536, vocab_size=49152)
    spec = kc.spec_from_hf_config(config, name="SmolLM2-135M")
    assert spec == kc.SMOLLM2_135M
    assert spec.bytes_per_token() == 2 * 30 * 3 * 64 * 2
    assert [r.kind for r in kc.kv_cache_table(spec)] == ["MHA", "GQA", "MQA"]


def test_spec_validation():
    with pytest.raises(ValueError, match="divisible"):
        kc.KVCacheSpec("x", 2, 6, 4, 64, 128)
    with pytest.raises(ValueError, match="n_layers"):
        kc.KVCacheSpec("x", 0, 4, 4, 64, 128)
    with pytest.raises(ValueError, match="bytes_per_value"):
        kc.kv_cache_bytes(1, 1, 1, 1, 1, bytes_per_value=0)
