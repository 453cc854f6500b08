"""Soft prompts and prefix tuning (llmcourse.prompt_tuning): shapes, freezing, gradients, and equivalence
with peft's PromptTuningConfig / PrefixTuningConfig given the same vectors."""

from __future__ import annotations

import pytest
import torch

from llmcourse import prompt_tuning as pt
from llmcourse.transformer import GPT, GPTConfig

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")])


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny_gpt(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig.tiny(**kw)).eval()


def _peft(model, kind: str, n_virtual: int):
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    from llmcourse.utils import quiet

    quiet()
    cls = PromptTuningConfig if kind == "prompt" else PrefixTuningConfig
    return get_peft_model(model, cls(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n_virtual))


def _trainable(model) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------------- soft prompt
def test_init_token_ids_repeats_and_truncates():
    assert pt.init_token_ids([5, 6], 5) == [5, 6, 5, 6, 5]
    assert pt.init_token_ids([1, 2, 3, 4], 2) == [1, 2]
    with pytest.raises(ValueError, match="no tokens"):
        pt.init_token_ids([], 3)


def test_soft_prompt_shapes_and_errors():
    sp = pt.SoftPrompt(4, 8, std=0.5)
    x = torch.randn(3, 5, 8)
    out = sp(x)
    assert out.shape == (3, 9, 8)
    torch.testing.assert_close(out[:, 4:], x)
    torch.testing.assert_close(out[1, :4], sp.weight.detach())
    with pytest.raises(ValueError, match="inputs_embeds"):
        sp(torch.randn(3, 5, 7))
    with pytest.raises(ValueError, match="init must have shape"):
        pt.SoftPrompt(4, 8, init=torch.zeros(3, 8))


def test_soft_prompt_from_text_uses_vocabulary_rows():
    emb = torch.nn.Embedding(20, 6)
    sp = pt.SoftPrompt.from_text(emb, [3, 7], 3)
    torch.testing.assert_close(sp.weight.detach(), emb.weight[[3, 7, 3]].detach())
    assert pt.nearest_tokens(sp.weight, emb.weight).flatten().tolist() == [3, 7, 3]


@pytest.mark.parametrize("T", [1, 6])
def test_prompt_tuning_gpt_freezes_and_learns(T):
    model = tiny_gpt()
    lm = pt.PromptTuningLM(model, pt.SoftPrompt(4, 32, std=0.02))
    assert _trainable(lm) == {"prompt.weight": (4, 32)}
    ids = torch.randint(0, 65, (2, T))
    out = lm(ids, targets=ids)
    assert out.logits.shape == (2, T, 65)
    out.loss.backward()
    assert lm.prompt.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # the prompt changes the output (it is read), and is prepended at the positions 0..P-1
    direct = model(ids).logits
    assert not torch.allclose(out.logits, direct, atol=1e-4)
    x = torch.cat([lm.prompt.weight.detach().expand(2, -1, -1), model.wte(ids)], dim=1)
    torch.testing.assert_close(out.logits, pt.logits_from_embeddings(model, x)[:, 4:])


def test_prompt_tuning_too_long_for_learned_positions():
    lm = pt.PromptTuningLM(tiny_gpt(), pt.SoftPrompt(8, 32))
    with pytest.raises(ValueError, match="exceed block_size"):
        lm(torch.randint(0, 65, (1, 30)))


@pytest.mark.parametrize("with_mask", [False, True])
def test_prompt_tuning_equals_peft(with_mask):
    theirs = _peft(tiny_llama(), "prompt", 5)
    # same trainable parameter count and shape as peft
    assert list(_trainable(theirs).values()) == [(5, 48)]
    ours = pt.PromptTuningLM(tiny_llama(), pt.SoftPrompt(5, 48, init=theirs.prompt_encoder.default.embedding.weight))
    assert list(_trainable(ours).values()) == [(5, 48)]
    ids = torch.randint(0, 97, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    if with_mask:
        ids[1, :2], mask[1, :2] = 0, 0  # left padding
    with torch.no_grad():
        a = theirs(input_ids=ids, attention_mask=mask if with_mask else None).logits  # (B, P + T, V)
        b = ours(ids, attention_mask=mask if with_mask else None).logits
    assert a.shape == (2, 12, 97) and b.shape == (2, 7, 97)
    torch.testing.assert_close(b, a[:, 5:], rtol=1e-5, atol=1e-5)


def test_nearest_tokens_cosine():
    vocab = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    vecs = torch.tensor([[10.0, 1.0], [-0.1, -2.0]])
    assert pt.nearest_tokens(vecs, vocab, k=1).flatten().tolist() == [0, 2]
    got = pt.nearest_tokens(vecs, vocab, k=2)
    assert got[0].tolist() == [0, 1]
    # vector 1 is (-0.1, -2.0): cosine with (0, 1) is -0.998, with (-1, 0) is 0.05 -> index 2 first
    assert got[1, 0].item() == 2


# ---------------------------------------------------------------------------------------------------- prefix
def test_prefix_kv_layout():
    prefix = pt.PrefixKV(n_virtual=3, n_layers=2, n_kv_heads=2, head_dim=4)
    kv = prefix(batch_size=5)
    assert len(kv) == 2 and all(k.shape == (5, 2, 3, 4) and v.shape == (5, 2, 3, 4) for k, v in kv)
    # row p holds [layer0 K, layer0 V, layer1 K, layer1 V], each KV * D values
    w = prefix.weight.detach().view(3, 4, 2, 4)  # (P, 2L, KV, D)
    torch.testing.assert_close(kv[1][0][0].detach(), w[:, 2].permute(1, 0, 2))  # layer 1 keys (KV, P, D)
    torch.testing.assert_close(kv[0][1][4].detach(), w[:, 1].permute(1, 0, 2))  # layer 0 values


@pytest.mark.parametrize("with_mask", [False, True])
def test_prefix_tuning_equals_peft(with_mask):
    theirs = _peft(tiny_llama(), "prefix", 4)
    ours = pt.PrefixTuningLM(tiny_llama(), 4)
    # GQA: keys/values have 2 heads of 8 dims -> 2 layers * 2 * 16 = 64 values per virtual token
    assert list(_trainable(theirs).values()) == [(4, 64)] == list(_trainable(ours).values())
    assert pt.kv_geometry(ours.model) == (2, 2, 8)
    with torch.no_grad():
        ours.prefix.weight.copy_(theirs.prompt_encoder.default.embedding.weight)
    ids = torch.randint(0, 97, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    if with_mask:
        ids[0, :3], mask[0, :3] = 0, 0
    m = mask if with_mask else None
    with torch.no_grad():
        a, b = theirs(input_ids=ids, attention_mask=m).logits, ours(ids, attention_mask=m).logits
        plain = tiny_llama()(ids, attention_mask=m).logits
    assert not torch.allclose(b, plain, atol=1e-3)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_prefix_from_text_equals_reading_the_text_first():
    """A prefix set to the model's own keys/values of a text == the model reading that text first."""
    model = tiny_llama()
    lm = pt.PrefixTuningLM(model, 4)
    text = torch.randint(0, 97, (1, 4))
    lm.init_from_text(text[0].tolist())
    ids = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        got = lm(ids).logits
        expected = model(torch.cat([text.expand(2, -1), ids], dim=1)).logits[:, 4:]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    lm.init_from_text([1, 2])  # repeated to 4 tokens: 1 2 1 2
    with torch.no_grad():
        got = lm(ids).logits
        expected = model(torch.cat([torch.tensor([[1, 2, 1, 2]]).expand(2, -1), ids], dim=1)).logits[:, 4:]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_prefix_from_text_gpt_uses_its_own_keys():
    model = tiny_gpt(n_layer=2)
    lm = pt.PrefixTuningLM(model, 3)
    lm.init_from_text([5, 6, 7])
    with torch.no_grad():
        _, k, v = model.h[1].attn.attn.qkv(model.h[1].ln_1(model.h[0](model.embed(torch.tensor([[5, 6, 7]])))))
        torch.testing.assert_close(lm.prefix(1)[1][0], k)
        torch.testing.assert_close(lm.prefix(1)[1][1], v)
    # capturing is switched off again: later plain calls keep no activations
    model(torch.tensor([[1, 2]]))
    assert all(not w.capture and w.captured is None for w in lm._wrappers)


def test_prefix_tuning_hf_gradients_reach_prefix_only():
    lm = pt.PrefixTuningLM(tiny_llama(), 3, std=0.1)
    ids = torch.randint(0, 97, (2, 5))
    lm(ids, targets=ids).loss.backward()
    assert lm.prefix.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.model.parameters())


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_prefix_tuning_gpt_matches_explicit_attention(n_kv_heads):
    """Our GPT with prefixes == a manual computation: each layer attends to [prefix keys, causal keys]."""
    model = tiny_gpt(n_layer=1, n_kv_heads=n_kv_heads)
    lm = pt.PrefixTuningLM(model, 3, std=0.5)
    assert lm.prefix.weight.shape == (3, 1 * 2 * (n_kv_heads or 4) * 8)
    ids = torch.randint(0, 65, (2, 5))
    with torch.no_grad():
        got = lm(ids).logits
        block = model.h[0]
        attn = block.attn.attn  # the wrapped MultiHeadAttention
        x = model.embed(ids)
        h = block.ln_1(x)
        q, k, v = attn.qkv(h)
        pk, pv = lm.prefix(2)[0]
        k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        rep = 4 // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = q @ k.transpose(-2, -1) / 8 ** 0.5  # (B, H, T, P + T)
        allowed = torch.ones(5, 8, dtype=torch.bool)
        allowed[:, 3:] = torch.ones(5, 5).tril().bool()
        y = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 32)
        x = x + attn.out_proj(y)
        x = x + block.mlp(block.ln_2(x))
        expected = model.lm_head(model.ln_f(x))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # without a prefix the wrapped model is the plain model again
        assert not torch.allclose(got, model(ids).logits, atol=1e-4)


def test_prefix_tuning_gpt_trains_prefix_only():
    lm = pt.PrefixTuningLM(tiny_gpt(), 2, std=0.1)
    ids = torch.randint(0, 65, (3, 4))
    lm(ids, targets=ids).loss.backward()
    assert lm.prefix.weight.grad.abs().sum() > 0
    assert [n for n, p in lm.named_parameters() if p.requires_grad] == ["prefix.weight"]


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_prompt_tuning_device(device):
    lm = pt.PromptTuningLM(tiny_gpt().to(device), pt.SoftPrompt(2, 32, device=device))
    out = lm(torch.randint(0, 65, (1, 3), device=device))
    assert out.logits.device.type == device
