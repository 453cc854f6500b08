"""Tests for llmcourse.transformer: GPT, the BERT-like encoder and the encoder-decoder."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcourse.transformer import (
    GPT,
    BlockConfig,
    Encoder,
    EncoderConfig,
    EncoderDecoder,
    FeedForward,
    GPTConfig,
    Seq2SeqConfig,
    TransformerBlock,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
POS = ["learned", "sinusoidal", "alibi", "none"]


def _ids(B, T, V, seed=0, device="cpu"):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "swiglu"])
def test_feedforward_shapes_and_activation(activation):
    torch.manual_seed(0)
    ff = FeedForward(12, 20, activation=activation)
    x = torch.randn(2, 5, 12)
    assert ff(x).shape == (2, 5, 12)
    assert (ff.gate_proj is not None) == (activation == "swiglu")
    if activation == "gelu_tanh":
        expected = ff.down_proj(F.gelu(ff.up_proj(x), approximate="tanh"))
        torch.testing.assert_close(ff(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="'tanh'"):
        FeedForward(4, 8, activation="tanh")


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("residual", [True, False])
def test_block_norm_and_residual_variants(norm, residual):
    torch.manual_seed(0)
    block = TransformerBlock(BlockConfig.tiny(norm=norm, residual=residual))
    x = torch.randn(2, 5, 32)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if norm == "post":  # the output of a post-norm block is normalised
        torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), rtol=0, atol=1e-5)
    if norm == "pre" and residual:  # identity path: zeroing both sub-layers leaves x unchanged
        for proj in (block.attn.out_proj, block.mlp.down_proj):
            torch.nn.init.zeros_(proj.weight)
            torch.nn.init.zeros_(proj.bias)
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_block_cross_attention_requires_and_uses_context():
    torch.manual_seed(0)
    block = TransformerBlock(BlockConfig.tiny(cross_attention=True))
    x, ctx = torch.randn(2, 4, 32), torch.randn(2, 6, 32)
    out = block(x, context=ctx, return_weights=True)
    assert out.self_weights.shape == (2, 4, 4, 4) and out.cross_weights.shape == (2, 4, 4, 6)
    assert not torch.allclose(out.hidden, block(x, context=torch.randn(2, 6, 32)))
    with pytest.raises(ValueError, match="context"):
        block(x)


def test_configs_validate_and_name_values():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        GPTConfig.tiny(d_model=30)
    with pytest.raises(ValueError, match=r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"):
        GPTConfig.tiny(n_kv_heads=3)
    with pytest.raises(ValueError, match="'rope'"):
        GPTConfig.tiny(pos_encoding="rope")
    with pytest.raises(ValueError, match="'mid'"):
        GPTConfig.tiny(norm="mid")
    with pytest.raises(ValueError, match="vocab_size must be positive, got 0"):
        GPTConfig.tiny(vocab_size=0)
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by n_heads \(4\)"):
        EncoderConfig.tiny(d_model=10)
    with pytest.raises(ValueError, match=r"pad_id \(99\)"):
        Seq2SeqConfig.tiny(pad_id=99)
    assert GPTConfig.tiny().d_ff == 4 * 32
    assert GPTConfig().d_model == 768 and GPTConfig().n_layer == 12  # GPT-2 small defaults


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("B,T", [(1, 1), (3, 7), (2, 32)])
def test_gpt_shapes_and_loss_is_cross_entropy(B, T, pos, device):
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(pos_encoding=pos)).to(device)
    idx, targets = _ids(B, T, 65, device=device), _ids(B, T, 65, seed=1, device=device)
    logits, loss = model(idx, targets)
    assert logits.shape == (B, T, 65)
    expected = F.cross_entropy(logits.reshape(-1, 65), targets.reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert abs(loss.item() - torch.log(torch.tensor(65.0)).item()) < 0.5  # near-uniform at init
    assert model(idx).loss is None


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_gpt_is_causal(pos, impl):
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(pos_encoding=pos, impl=impl)).eval()
    idx = _ids(2, 10, 65)
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 65
    logits, logits_changed = model(idx).logits, model(changed).logits
    assert not torch.allclose(logits[:, 6:], logits_changed[:, 6:])
    torch.testing.assert_close(logits[:, :6], logits_changed[:, :6], rtol=0, atol=1e-6)


def test_gpt_impls_agree_and_weights_are_tied():
    torch.manual_seed(0)
    manual = GPT(GPTConfig.tiny(impl="manual", n_kv_heads=2))
    fast = GPT(GPTConfig.tiny(impl="sdpa", n_kv_heads=2))
    fast.load_state_dict(manual.state_dict())
    idx = _ids(2, 9, 65)
    torch.testing.assert_close(fast(idx).logits, manual(idx).logits, rtol=1e-5, atol=1e-5)
    assert manual.lm_head.weight is manual.wte.weight
    untied, tied = GPT(GPTConfig.tiny(tie_weights=False)), GPT(GPTConfig.tiny())
    assert untied.num_parameters() == tied.num_parameters() + 65 * 32  # a separate (V, C) head
    # GQA with 2 KV heads of D=8 halves k and v: 2 layers x 2 projections x (32 x 16 + 16) fewer.
    assert tied.num_parameters() - manual.num_parameters() == 2 * 2 * (32 * 16 + 16)


def test_gpt_block_size_limits_learned_positions_only():
    model = GPT(GPTConfig.tiny(block_size=8))
    with pytest.raises(ValueError, match="sequence length 9 exceeds block_size 8"):
        model(_ids(1, 9, 65))
    assert GPT(GPTConfig.tiny(block_size=8, pos_encoding="alibi"))(_ids(1, 12, 65)).logits.shape == (1, 12, 65)


def test_gpt_generate_greedy_is_deterministic_and_matches_argmax():
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny(block_size=8, dropout=0.1)).train()
    prompt = _ids(2, 3, 65)
    a = model.generate(prompt, 10, greedy=True)
    b = model.generate(prompt, 10, greedy=True)
    assert a.shape == (2, 13) and torch.equal(a, b)
    assert torch.equal(a[:, :3], prompt)
    assert model.training  # mode restored
    model.eval()
    step1 = model(prompt).logits[:, -1].argmax(-1)
    assert torch.equal(a[:, 3], step1)
    # The context is cropped to block_size: position 12 is predicted from tokens 4..11 only.
    last = model(a[:, 4:12]).logits[:, -1].argmax(-1)
    assert torch.equal(a[:, 12], last)


def test_gpt_generate_sampling_with_generator_and_top_k():
    torch.manual_seed(0)
    model = GPT(GPTConfig.tiny())
    prompt = _ids(3, 2, 65)
    a = model.generate(prompt, 8, temperature=1.5, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 8, temperature=1.5, generator=torch.Generator().manual_seed(7))
    c = model.generate(prompt, 8, temperature=1.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    top1 = model.generate(prompt, 5, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(top1, model.generate(prompt, 5, greedy=True))  # top-1 sampling is greedy
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(prompt, 1, temperature=0.0)
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        model.generate(prompt, 1, top_k=0)


def test_gpt_attention_maps_are_causal_distributions():
    model = GPT(GPTConfig.tiny())
    maps = model.attention_maps(_ids(2, 6, 65))
    assert len(maps) == 2 and maps[0].shape == (2, 4, 6, 6)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 6), rtol=1e-5, atol=1e-5)
    assert torch.equal(maps[1].triu(1), torch.zeros_like(maps[1]))


def test_gpt_residual_switch_changes_gradient_flow():
    idx = _ids(4, 16, 65)
    norms = {}
    for residual in (True, False):
        torch.manual_seed(0)
        model = GPT(GPTConfig.tiny(n_layer=8, residual=residual, tie_weights=False))
        model(idx, idx).loss.backward()
        norms[residual] = model.wte.weight.grad.norm().item()  # the gradient that reaches the bottom
    assert norms[True] > 4 * norms[False]  # without residuals little gradient reaches the embeddings


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "alibi"])
def test_encoder_is_bidirectional_and_masks_padding(pos):
    torch.manual_seed(0)
    model = Encoder(EncoderConfig.tiny(pos_encoding=pos)).eval()
    idx = _ids(2, 8, 40)
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 40
    out, out_changed = model(idx), model(changed)
    assert out.hidden.shape == (2, 8, 32) and out.logits.shape == (2, 8, 40)
    assert not torch.allclose(out.hidden[:, 0], out_changed.hidden[:, 0])  # the first token sees the last
    padding = torch.ones(2, 8, dtype=torch.bool)
    padding[:, 6:] = False
    masked, masked_changed = model(idx, padding_mask=padding), model(changed, padding_mask=padding)
    torch.testing.assert_close(masked.hidden[:, :6], masked_changed.hidden[:, :6], rtol=0, atol=1e-6)


def test_encoder_mlm_loss_ignores_unmasked_positions():
    torch.manual_seed(0)
    model = Encoder(EncoderConfig.tiny())
    idx = _ids(2, 8, 40)
    targets = torch.full_like(idx, -100)
    targets[:, 2] = idx[:, 2]
    out = model(idx, targets=targets)
    expected = F.cross_entropy(out.logits[:, 2], idx[:, 2])
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)
    assert model.mlm_decoder.weight is model.wte.weight


@pytest.mark.parametrize("pos", ["sinusoidal", "learned"])
def test_encoder_decoder_uses_cross_attention_and_is_causal(pos):
    torch.manual_seed(0)
    model = EncoderDecoder(Seq2SeqConfig.tiny(pos_encoding=pos)).eval()
    src, tgt = _ids(2, 7, 16), _ids(2, 5, 16)
    src[src == 0] = 3  # no padding in this test
    logits = model(src, tgt).logits
    assert logits.shape == (2, 5, 16)
    other_src = src.clone()
    other_src[:, 3] = (other_src[:, 3] + 1 - 3) % 13 + 3
    assert not torch.allclose(logits, model(other_src, tgt).logits)  # the decoder reads the source
    tgt2 = tgt.clone()
    tgt2[:, 3:] = (tgt2[:, 3:] + 1) % 16
    torch.testing.assert_close(model(src, tgt2).logits[:, :3], logits[:, :3], rtol=0, atol=1e-6)
    # Source padding is invisible: extra PAD columns change nothing.
    padded = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded, tgt).logits, logits, rtol=1e-5, atol=1e-5)


def test_encoder_decoder_loss_and_greedy_decode():
    torch.manual_seed(0)
    model = EncoderDecoder(Seq2SeqConfig.tiny())
    src, tgt_in, tgt_out = _ids(3, 6, 16), _ids(3, 5, 16, seed=1), _ids(3, 5, 16, seed=2)
    tgt_out[:, -1] = 0  # padding in the targets is ignored
    out = model(src, tgt_in, tgt_out)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 16), tgt_out[:, :-1].reshape(-1))
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)
    decoded = model.greedy_decode(src, max_len=6, bos_id=1)
    assert decoded.shape == (3, 6)
    # The first decoded token is the argmax after BOS.
    first = model(src, torch.ones(3, 1, dtype=torch.long)).logits[:, -1].argmax(-1)
    assert torch.equal(decoded[:, 0], first)
    # With eos_id = that first token, every row stops immediately and is padded afterwards.
    stop = model.greedy_decode(src[:1], max_len=6, bos_id=1, eos_id=int(first[0]))
    assert stop.shape == (1, 1) and stop[0, 0] == first[0]
