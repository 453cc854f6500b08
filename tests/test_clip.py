"""Tests for llmcourse.clip: the symmetric contrastive loss against a reference formula and Hugging Face,
its symmetry, temperature and normalisation; the encoders; zero-shot prediction and the linear probe."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse import clip, digits

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _emb(B, E, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, E, generator=g, dtype=dtype), torch.randn(B, E, generator=g, dtype=dtype)


def _reference_loss(img, txt, temperature):
    """The loss written out term by term: -log of the matching pair's softmax probability, averaged
    over the B image rows and the B caption columns."""
    B = len(img)
    img = img.double() / img.double().norm(dim=1, keepdim=True)
    txt = txt.double() / txt.double().norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(B):
        sims_i = torch.stack([img[i] @ txt[j] for j in range(B)]) / temperature  # image i vs all captions
        sims_t = torch.stack([img[j] @ txt[i] for j in range(B)]) / temperature  # caption i vs all images
        total += -(sims_i[i] - torch.logsumexp(sims_i, 0)) - (sims_t[i] - torch.logsumexp(sims_t, 0))
    return total / (2 * B)


@pytest.mark.parametrize("B,E,temperature", [(1, 4, 0.07), (5, 8, 0.07), (7, 3, 1.0), (16, 32, 0.02)])
def test_clip_loss_equals_reference_formula(B, E, temperature):
    img, txt = _emb(B, E)
    loss = clip.clip_loss(img, txt, temperature)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(loss.double(), _reference_loss(img, txt, temperature), rtol=1e-5, atol=1e-5)


def test_clip_loss_equals_hugging_face():
    from transformers.models.clip import modeling_clip

    # Renamed across versions: clip_loss (<= 5.17) / image_text_contrastive_loss (later).
    hf_loss = getattr(modeling_clip, "clip_loss", None) or modeling_clip.image_text_contrastive_loss
    img, txt = _emb(6, 16)
    logits_per_text = F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T / 0.07
    torch.testing.assert_close(clip.clip_loss(img, txt, 0.07), hf_loss(logits_per_text), rtol=1e-5, atol=1e-6)


def test_clip_loss_is_symmetric_and_both_directions_matter():
    img, txt = _emb(8, 16, seed=1)
    img[0] *= 0.0
    img[0, 0] = 1.0  # make the problem lopsided so that the two directions differ
    loss = clip.clip_loss(img, txt, 0.1)
    torch.testing.assert_close(clip.clip_loss(txt, img, 0.1), loss)  # swapping roles changes nothing
    logits = clip.clip_logits(img, txt, 0.1)
    targets = torch.arange(8)
    image_to_text, text_to_image = F.cross_entropy(logits, targets), F.cross_entropy(logits.T, targets)
    assert abs(image_to_text - text_to_image) > 1e-3  # teeth: a one-directional loss is different
    torch.testing.assert_close(loss, (image_to_text + text_to_image) / 2)


def test_clip_loss_normalises_and_uses_the_temperature():
    img, txt = _emb(6, 8, seed=2)
    scales = torch.tensor([[0.1], [1.0], [3.0], [10.0], [0.5], [2.0]])
    torch.testing.assert_close(clip.clip_loss(img * scales, txt * 7.0), clip.clip_loss(img, txt))
    assert abs(clip.clip_loss(img, txt, 0.07) - clip.clip_loss(img, txt, 1.0)) > 0.1
    # Perfectly aligned pairs with a low temperature: the loss vanishes; at temperature 1 it cannot.
    e = F.normalize(torch.eye(6), dim=-1)
    assert clip.clip_loss(e, e, 0.01) < 1e-6
    assert clip.clip_loss(e, e, 1.0) > 0.9
    # Uniform similarities: loss = log B.
    torch.testing.assert_close(clip.clip_loss(torch.ones(6, 4), torch.ones(6, 4)), torch.tensor(math.log(6)))


def test_clip_loss_errors_and_gradients():
    with pytest.raises(ValueError, match=r"\(B, E\)"):
        clip.clip_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="temperature"):
        clip.clip_loss(torch.ones(3, 4), torch.ones(3, 4), 0.0)
    img, txt = (t.requires_grad_() for t in _emb(4, 8))
    clip.clip_loss(img, txt).backward()
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------
# Encoders and the model
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return digits.caption_tokenizer()


def test_text_encoder_pools_at_end_of_text(tok):
    torch.manual_seed(0)
    model = clip.CLIP(clip.CLIPConfig(vocab_size=tok.vocab_size)).eval()
    short = tok.batch_encode(["the digit one"])  # 4 tokens with EOS
    padded = tok.batch_encode(["the digit one"], max_len=10)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(short), model.encode_text(padded))
        other = model.encode_text(tok.batch_encode(["the digit two"]))
    assert not torch.allclose(model.encode_text(short), other)
    with pytest.raises(ValueError, match="at least one token"):
        model.encode_text(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="T <= 16"):
        model.encode_text(torch.ones(1, 17, dtype=torch.long))


@pytest.mark.parametrize("device", DEVICES)
def test_clip_forward(tok, device):
    torch.manual_seed(0)
    model = clip.CLIP(clip.CLIPConfig(vocab_size=tok.vocab_size)).to(device)
    images = torch.rand(4, 1, 8, 8, device=device)
    tokens = tok.batch_encode([digits.caption(d) for d in range(4)]).to(device)
    out = model(images, tokens)
    assert out.logits.shape == (4, 4) and out.image_emb.shape == (4, 32)
    torch.testing.assert_close(out.image_emb.norm(dim=-1), torch.ones(4, device=device))
    torch.testing.assert_close(out.loss, clip.clip_loss(out.image_emb, out.text_emb, model.temperature))
    torch.testing.assert_close(model.temperature, torch.tensor(0.07, device=device))
    with torch.no_grad():
        model.log_logit_scale.fill_(10.0)  # would be temperature e^-10; clipped at 0.01
    torch.testing.assert_close(model.temperature, torch.tensor(0.01, device=device))
    assert model(images, tokens, return_loss=False).loss is None


def test_clip_config_validation():
    with pytest.raises(ValueError, match="n_classes must be 0"):
        clip.CLIPConfig(vision=clip.ViTConfig(n_classes=10))
    with pytest.raises(ValueError, match="min_temperature"):
        clip.CLIPConfig(init_temperature=0.001)


def test_a_few_steps_reduce_the_loss(tok):
    torch.manual_seed(0)
    model = clip.CLIP(clip.CLIPConfig(vocab_size=tok.vocab_size))
    split = digits.load_digits_split()
    first_of_each = torch.stack([(split.train_y == d).nonzero()[0, 0] for d in range(10)])  # 10 distinct pairs
    images, labels = split.train_x[first_of_each], split.train_y[first_of_each]
    tokens = tok.batch_encode(digits.make_captions(labels), max_len=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(images, tokens).loss.item()
    for _ in range(100):
        loss = model(images, tokens).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


# ----------------------------------------------------------------------------------------------------
# Zero-shot and linear probe
# ----------------------------------------------------------------------------------------------------
def test_zero_shot_predict_normalises_both_sides():
    class_emb = torch.tensor([[10.0, 0.0], [0.0, 1.0]])  # class 0 has a long vector
    image_emb = torch.tensor([[0.6, 0.8], [1.0, 0.1]])
    assert torch.equal(clip.zero_shot_predict(image_emb, class_emb), torch.tensor([1, 0]))
    assert torch.equal((image_emb @ class_emb.T).argmax(1), torch.tensor([0, 0]))  # raw dot products differ
    with pytest.raises(ValueError, match=r"\(K, E\)"):
        clip.zero_shot_predict(image_emb, torch.zeros(3, 5))


def test_class_embeddings_average_templates(tok):
    torch.manual_seed(0)
    model = clip.CLIP(clip.CLIPConfig(vocab_size=tok.vocab_size))
    templates = ("a handwritten {}", "the digit {}")
    weights = clip.class_embeddings(model, tok, ["one", "two"], templates)
    assert weights.shape == (2, 32) and model.training  # mode restored
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        one = model.encode_text(tok.batch_encode(["a handwritten one", "the digit one"], max_len=16))
    torch.testing.assert_close(weights[0], F.normalize(one.mean(0), dim=-1))
    with pytest.raises(ValueError, match="at least one"):
        clip.class_embeddings(model, tok, [], templates)


def test_linear_probe():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    features = torch.randn(40, 6, generator=g) * 0.1 + F.one_hot(labels, 6).float() * 3
    assert clip.linear_probe(features[:30], labels[:30], features[30:], labels[30:]) == 1.0
    noise = torch.randn(40, 6, generator=g)
    assert clip.linear_probe(noise[:30], labels[:30], noise[30:], labels[30:]) < 0.8
