"""Tests for llmcourse.vit (patches, patch embedding, ViT, CNN baseline) and llmcourse.digits (data,
captions, tokenizer, interleaved sequences)."""
from __future__ import annotations

import pytest
import torch

from llmcourse import digits
from llmcourse.vit import (
    PatchEmbedding,
    SmallCNN,
    ViT,
    ViTConfig,
    accuracy,
    patchify,
    position_similarity,
    unpatchify,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


# ----------------------------------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------------------------------
def test_patchify_by_hand():
    image = torch.arange(16.0).view(1, 1, 4, 4)  # rows 0-3, 4-7, 8-11, 12-15
    patches = patchify(image, 2)
    assert patches.shape == (1, 4, 4)
    # Raster order of patches, each flattened row by row.
    expected = torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]], dtype=torch.float32)
    assert torch.equal(patches[0], expected)


@pytest.mark.parametrize("B,C,H,W,P", [(2, 3, 6, 4, 2), (1, 1, 8, 8, 4), (3, 2, 5, 5, 5), (1, 1, 3, 3, 1)])
def test_patchify_round_trip_and_channel_order(B, C, H, W, P):
    images = torch.randn(B, C, H, W)
    patches = patchify(images, P)
    assert patches.shape == (B, (H // P) * (W // P), C * P * P)
    assert torch.equal(unpatchify(patches, P, (H, W), C), images)
    # The first patch is the top-left block, channel first.
    assert torch.equal(patches[:, 0], images[:, :, :P, :P].reshape(B, -1))


def test_patchify_errors():
    with pytest.raises(ValueError, match="not divisible by patch_size 3"):
        patchify(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        patchify(torch.zeros(8, 8), 2)
    with pytest.raises(ValueError, match="do not fit"):
        unpatchify(torch.zeros(1, 5, 4), 2, (4, 4))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("C,P,D", [(1, 2, 16), (3, 4, 8), (2, 1, 5)])
def test_patch_embedding_equals_strided_conv(C, P, D, device):
    torch.manual_seed(0)
    embed = PatchEmbedding(C, P, D).to(device)
    images = torch.randn(2, C, 4 * P, 3 * P, device=device)
    conv = embed.as_conv2d()
    reference = conv(images).flatten(2).transpose(1, 2)  # (B, N, D), what timm / HF compute
    torch.testing.assert_close(embed(images), reference, rtol=1e-5, atol=1e-5)
    # An independent conv with the same weights gives the same (the mapping is not circular).
    conv2 = torch.nn.Conv2d(C, D, P, stride=P).to(device)
    with torch.no_grad():
        conv2.weight.copy_(embed.proj.weight.reshape(D, C, P, P))
        conv2.bias.copy_(embed.proj.bias)
    torch.testing.assert_close(embed(images), conv2(images).flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# ViT and CNN
# ----------------------------------------------------------------------------------------------------
def test_vit_config_validation():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        ViTConfig(image_size=8, patch_size=3)
    with pytest.raises(ValueError, match="pool"):
        ViTConfig(pool="max")
    with pytest.raises(ValueError, match="divisible by n_heads"):
        ViTConfig(d_model=30, n_head=4)
    assert ViTConfig().n_patches == 16 and ViTConfig(patch_size=4).n_patches == 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_shapes_loss_and_attention(pool, device):
    torch.manual_seed(0)
    config = ViTConfig.tiny(pool=pool, n_layer=2)
    model = ViT(config).to(device)
    images, labels = torch.randn(3, 1, 8, 8, device=device), torch.tensor([1, 2, 3], device=device)
    out = model(images, labels)
    assert out.logits.shape == (3, 10) and out.features.shape == (3, 32) and out.hidden.shape == (3, 17, 32)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    expected_features = out.hidden[:, 0] if pool == "cls" else out.hidden[:, 1:].mean(1)
    torch.testing.assert_close(out.features, expected_features)
    maps = model.attention_maps(images)
    assert len(maps) == 2 and maps[0].shape == (3, 2, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 2, 17, device=device))
    assert model(images).loss is None


def test_vit_without_positions_ignores_patch_order():
    """Attention is permutation-equivariant: without position embeddings, shuffling the patches cannot
    change the CLS output. With them it does. This is why ViT needs position embeddings."""
    torch.manual_seed(0)
    model = ViT(ViTConfig.tiny()).eval()
    images = torch.randn(2, 1, 8, 8)
    perm = torch.randperm(16)
    shuffled = unpatchify(patchify(images, 2)[:, perm], 2, (8, 8))
    with torch.no_grad():
        model.pos_embed.normal_(std=0.5)  # make positions matter
        assert not torch.allclose(model(images).logits, model(shuffled).logits, atol=1e-4)
        model.pos_embed.zero_()
        torch.testing.assert_close(model(images).logits, model(shuffled).logits, rtol=1e-4, atol=1e-5)


def test_vit_feature_encoder_has_no_head():
    model = ViT(ViTConfig.tiny(n_classes=0))
    out = model(torch.randn(2, 1, 8, 8))
    assert model.head is None and out.logits is None and out.features.shape == (2, 32)
    with pytest.raises(ValueError, match="no classification head"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8))


def test_vit_learns_a_small_batch():
    torch.manual_seed(0)
    model = ViT(ViTConfig.tiny())
    split = digits.load_digits_split()
    x, y = split.train_x[:32], split.train_y[:32]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(x, y).loss.item()
    for _ in range(60):
        loss = model(x, y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    assert accuracy(model, x, y) > 0.9


def test_small_cnn_and_accuracy():
    torch.manual_seed(0)
    cnn = SmallCNN((4, 8, 8))
    out = cnn(torch.randn(5, 1, 8, 8), torch.zeros(5, dtype=torch.long))
    assert out.logits.shape == (5, 10) and out.features.shape == (5, 8) and out.loss.ndim == 0
    with pytest.raises(ValueError, match="three positive"):
        SmallCNN((4, 8))

    class Oracle(torch.nn.Module):  # logits = one-hot of the first pixel's value
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images):
            return type(out)(torch.nn.functional.one_hot(images[:, 0, 0, 0].long(), 10).float(), None, images, None)

    images = torch.zeros(6, 1, 8, 8)
    images[:, 0, 0, 0] = torch.tensor([0, 1, 2, 3, 4, 5.0])
    assert accuracy(Oracle(), images, torch.tensor([0, 1, 2, 3, 4, 5]), batch_size=4) == 1.0
    assert accuracy(Oracle(), images, torch.tensor([0, 1, 2, 3, 9, 9])) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="as many images as labels"):
        accuracy(Oracle(), images, torch.tensor([0]))


def test_position_similarity():
    pos = torch.randn(1, 17, 8)
    sim = position_similarity(pos)
    assert sim.shape == (16, 16)
    torch.testing.assert_close(sim.diagonal(), torch.ones(16))
    torch.testing.assert_close(sim, sim.T)
    torch.testing.assert_close(sim, position_similarity(pos[0, 1:]))


# ----------------------------------------------------------------------------------------------------
# Digits data
# ----------------------------------------------------------------------------------------------------
def test_digits_split():
    split = digits.load_digits_split()
    assert split.train_x.shape == (1437, 1, 8, 8) and split.test_x.shape == (360, 1, 8, 8)
    assert split.train_x.min() >= 0 and split.train_x.max() == 1.0
    counts = torch.bincount(split.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per digit
    again = digits.load_digits_split()
    assert torch.equal(again.test_x, split.test_x)
    with pytest.raises(ValueError, match="test_fraction"):
        digits.load_digits_split(test_fraction=1.5)


def test_shift_images():
    images = torch.zeros(4, 1, 8, 8)
    images[:, :, 3:5, 3:5] = 1.0  # a centred square moves but stays whole
    g = torch.Generator().manual_seed(0)
    shifted = digits.shift_images(images, 1, g)
    assert torch.equal(shifted.sum((1, 2, 3)), images.sum((1, 2, 3)))
    assert not torch.equal(shifted, images)
    assert digits.shift_images(images, 0) is images
    batch_fn = digits.digit_batch_fn(digits.load_digits_split(), 8, max_shift=1)
    x, y = batch_fn("train", g)
    assert x.shape == (8, 1, 8, 8) and y.shape == (8,)


def test_word_tokenizer():
    tok = digits.caption_tokenizer()
    text = "a handwritten seven"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("a zebra")[1] == tok.UNK
    assert tok.encode("<image> this is a")[0] == tok.IMAGE
    batch = tok.batch_encode(["the digit one", "a small grey picture of a nine"])
    assert batch.shape == (2, 8) and batch[0, 3] == tok.EOS and (batch[0, 4:] == tok.PAD).all()
    with pytest.raises(ValueError, match="longer than max_len=3"):
        tok.batch_encode(["the digit one"], max_len=3)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([999])
    with pytest.raises(ValueError, match="distinct"):
        digits.WordTokenizer(["a", "a"])


def test_captions():
    assert digits.caption(7) == "a handwritten seven"
    assert digits.caption(0, "the digit {}") == "the digit zero"
    assert digits.caption(8, "an image of a {}") == "an image of an eight"  # the article follows the word
    with pytest.raises(ValueError, match="0..9"):
        digits.caption(10)
    with pytest.raises(ValueError, match="exactly one"):
        digits.caption(1, "no slot")
    labels = torch.tensor([3, 3, 8])
    caps = digits.make_captions(labels, seed=1)
    assert all(c.split()[-1] == w or w in c for c, w in zip(caps, ["three", "three", "eight"]))
    assert caps == digits.make_captions(labels, seed=1)


def test_make_interleaved():
    tok = digits.caption_tokenizer()
    images = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 8, 8)
    labels = torch.arange(10)
    batch = digits.make_interleaved(images, labels, 5, tok, generator=torch.Generator().manual_seed(0))
    assert batch.tokens.shape == (5, 15) and batch.images.shape == (5, 2, 1, 8, 8)
    assert ((batch.tokens == tok.IMAGE).sum(1) == 2).all()
    for b in range(5):
        for m in range(2):
            word = tok.itos[batch.tokens[b, batch.digit_positions[b, m]]]
            assert word == digits.NUMBER_WORDS[batch.labels[b, m]]
            assert batch.images[b, m, 0, 0, 0] == batch.labels[b, m]  # the image that goes with it
    assert tok.decode(batch.tokens[0]).startswith("<bos> <image> this is the digit ")
