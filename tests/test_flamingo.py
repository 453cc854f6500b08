"""Tests for llmcourse.flamingo: exact identity with the frozen LM at initialisation, gating, the
per-image attention mask, the perceiver resampler, and that training touches only the new layers."""
from __future__ import annotations

import pytest
import torch

from llmcourse import digits
from llmcourse.flamingo import (
    Flamingo,
    FlamingoConfig,
    GatedCrossAttention,
    PerceiverBlock,
    PerceiverResampler,
    media_attention_mask,
)
from llmcourse.transformer import GPT, GPTConfig

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
IMAGE = digits.WordTokenizer.IMAGE


def _lm(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{"vocab_size": 20, "block_size": 16, "n_layer": 3, "n_head": 4, "d_model": 32,
                            **overrides}))


def _batch(B=3, T=12, M=2, N=5, Dv=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 20, (B, T), generator=g)
    tokens[:, 2] = IMAGE
    tokens[:, 7] = IMAGE
    return tokens, torch.randn(B, M, N, Dv, generator=g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("overrides,config", [
    ({}, FlamingoConfig(n_latents=4)),
    ({"pos_encoding": "alibi"}, FlamingoConfig(n_latents=3, xattn_every=2, media_dim=12)),
    ({"n_layer": 1, "dropout": 0.1}, FlamingoConfig(n_latents=1, resampler_layers=2)),
])
def test_identical_to_frozen_lm_at_init(overrides, config, device):
    lm = _lm(**overrides).to(device)
    model = Flamingo(lm, config).to(device).train()  # train mode: the frozen LM must still skip dropout
    tokens, media = _batch(Dv=config.media_dim or 32)
    tokens, media = tokens.to(device), media.to(device)
    with torch.no_grad():
        assert torch.equal(model(tokens, media).logits, lm(tokens).logits)  # exactly, not approximately
        # Teeth: open the gates and the images change the output, but only from the first image on.
        for layer in model.xattn.values():
            layer.attn_gate.fill_(1.0)
            layer.ff_gate.fill_(1.0)
        opened = model(tokens, media).logits
    reference = lm(tokens).logits
    assert not torch.allclose(opened[:, 2:], reference[:, 2:], atol=1e-4)
    # Before the first <image> the cross-attention sees nothing; only the gated FFN acts there.
    assert opened.shape == reference.shape


def test_gates_start_closed_and_are_reported():
    model = Flamingo(_lm(), FlamingoConfig(xattn_every=2))
    assert model.xattn_layers == [0, 2]
    assert model.gates() == {"0": (0.0, 0.0), "2": (0.0, 0.0)}


def test_gated_cross_attention_identity_then_active():
    torch.manual_seed(0)
    layer = GatedCrossAttention(16, n_heads=2)
    x, visual = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    assert torch.equal(layer(x, visual), x)
    with torch.no_grad():
        layer.attn_gate.fill_(0.5)
    assert not torch.allclose(layer(x, visual), x)
    # A token whose mask row is empty receives nothing from the attention branch.
    mask = torch.ones(2, 5, 7, dtype=torch.bool)
    mask[:, 0] = False
    torch.testing.assert_close(layer(x, visual, mask)[:, 0], x[:, 0])


def test_media_attention_mask_by_hand():
    tokens = torch.tensor([[9, IMAGE, 9, 9, IMAGE, 9]])
    mask = media_attention_mask(tokens, IMAGE, n_images=2, n_latents=2)  # keys: img0 l0, img0 l1, img1 l0, img1 l1
    expected = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]],
                            dtype=torch.bool)
    assert torch.equal(mask[0], expected)
    with pytest.raises(ValueError, match="2 <image> tokens but only 1 images"):
        media_attention_mask(tokens, IMAGE, n_images=1, n_latents=2)


def test_later_images_do_not_affect_earlier_tokens():
    """Causality across images: changing the second image leaves every token before it unchanged;
    changing the first image changes tokens after it."""
    model = Flamingo(_lm(), FlamingoConfig(n_latents=4))
    with torch.no_grad():
        for layer in model.xattn.values():
            layer.attn_gate.fill_(1.0)
    tokens, media = _batch()
    other_second, other_first = media.clone(), media.clone()
    g = torch.Generator().manual_seed(1)
    other_second[:, 1] = torch.randn(media[:, 1].shape, generator=g)  # (a constant shift would be undone by LayerNorm)
    other_first[:, 0] = torch.randn(media[:, 0].shape, generator=g)
    with torch.no_grad():
        base, second, first = (model(tokens, m).logits for m in (media, other_second, other_first))
    torch.testing.assert_close(second[:, :7], base[:, :7])
    assert not torch.allclose(second[:, 7:], base[:, 7:], atol=1e-5)
    torch.testing.assert_close(first[:, :2], base[:, :2])
    assert not torch.allclose(first[:, 2:7], base[:, 2:7], atol=1e-5)


@pytest.mark.parametrize("N", [1, 5, 64])
def test_resampler_gives_a_fixed_number_of_tokens(N):
    torch.manual_seed(0)
    resampler = PerceiverResampler(32, n_latents=6, n_layers=2, media_dim=10)
    assert resampler(torch.randn(3, N, 10)).shape == (3, 6, 32)
    with pytest.raises(ValueError, match=r"\(B, N, Dv\)"):
        resampler(torch.randn(3, 10))


def test_perceiver_block_attends_to_features_and_latents():
    torch.manual_seed(0)
    block = PerceiverBlock(16, n_heads=2)
    latents, media = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    z = block.ln_latents(latents)
    kv = torch.cat([block.ln_media(media), z], dim=1)
    expected = latents + block.attn(z, context=kv)
    expected = expected + block.ff(block.ln_ff(expected))
    torch.testing.assert_close(block(latents, media), expected)
    # Teeth: attending to the media alone (a common slip) gives something else.
    wrong = latents + block.attn(z, context=block.ln_media(media))
    wrong = wrong + block.ff(block.ln_ff(wrong))
    assert not torch.allclose(block(latents, media), wrong, atol=1e-4)
    with pytest.raises(ValueError, match="latents"):
        block(latents, torch.randn(2, 5, 8))


def test_training_updates_only_the_new_layers():
    lm = _lm()
    lm_before = {k: v.clone() for k, v in lm.state_dict().items()}
    model = Flamingo(lm, FlamingoConfig(n_latents=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("lm.") for n in trainable)
    new_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    tokens, media = _batch()
    targets = torch.cat([tokens[:, 1:], torch.full((3, 1), -100)], dim=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = model(tokens, media, targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in lm_before.items())
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, new_before[n])]
    assert "xattn.0.attn_gate" in changed and "resampler.latents" in changed
    assert not model.lm.training


def test_flamingo_errors():
    with pytest.raises(ValueError, match="GPT"):
        Flamingo(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="image_token_id"):
        Flamingo(_lm(), FlamingoConfig(image_token_id=50))
    with pytest.raises(ValueError, match="xattn_every"):
        FlamingoConfig(xattn_every=0)
    model = Flamingo(_lm())
    tokens, media = _batch()
    with pytest.raises(ValueError, match="same batch size"):
        model(tokens, media[:2])
    with pytest.raises(ValueError, match=r"\(B, M, N, Dv\)"):
        model(tokens, media[:, 0])
