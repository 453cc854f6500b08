"""Tests for llmcourse.train: schedule, optimizer groups, the training loop and the tiny pretrained GPT."""
from __future__ import annotations

import math
import re

import pytest
import torch

from llmcourse.data import load_corpus, make_sort_task
from llmcourse.train import (
    TINY_GPT_DIR,
    TINY_GPT_SHA256,
    TINY_GPT_THREADS,
    TrainConfig,
    configure_optimizer,
    cosine_lr,
    estimate_loss,
    load_tiny_gpt,
    perplexity,
    tiny_gpt,
    train,
    train_lm,
    train_tiny_gpt,
)
from llmcourse.transformer import GPT, EncoderDecoder, GPTConfig, Seq2SeqConfig


def test_train_config_validation():
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="min_lr=0.1"):
        TrainConfig(lr=0.01, min_lr=0.1)
    with pytest.raises(ValueError, match="grad_clip must be positive or None, got 0"):
        TrainConfig(grad_clip=0)
    assert TrainConfig.tiny(steps=5).steps == 5


def test_cosine_lr_schedule():
    c = TrainConfig(steps=110, lr=1.0, min_lr=0.1, warmup=10)
    assert cosine_lr(0, c) == pytest.approx(0.1)
    assert cosine_lr(9, c) == pytest.approx(1.0)  # end of warm-up: peak
    assert cosine_lr(60, c) == pytest.approx(0.55)  # half-way through the decay: the mean
    assert cosine_lr(110, c) == pytest.approx(0.1)
    lrs = [cosine_lr(s, c) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay after warm-up


def test_optimizer_groups_skip_decay_on_biases_and_norms():
    model = GPT(GPTConfig.tiny())
    opt = configure_optimizer(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert any(p is model.ln_f.weight for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_parameters()


def test_train_lm_learns_a_pattern_and_records_history():
    torch.manual_seed(0)
    tokens = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7] * 200)  # perfectly predictable after one token
    train_tokens, val_tokens = tokens[:1400], tokens[1400:]
    model = GPT(GPTConfig.tiny(vocab_size=8, block_size=16))
    before = estimate_loss(model, val_tokens, block_size=16, batch_size=8, n_batches=2)
    config = TrainConfig.tiny(steps=30, eval_every=10)
    history = train_lm(model, train_tokens, val_tokens, config, block_size=16, device="cpu", progress=False)
    after = estimate_loss(model, val_tokens, block_size=16, batch_size=8, n_batches=2)
    assert before > 1.5 and after < 0.5 * before
    assert history.steps == [0, 10, 20, 30]
    assert len(history.step_loss) == 30 and len(history.val_loss) == len(history.lr) == 4
    assert history.tokens_seen == [0, 10 * 8 * 16, 20 * 8 * 16, 30 * 8 * 16]
    assert history.val_loss[-1] < history.val_loss[0] and history.final_val_loss == history.val_loss[-1]
    assert history.seconds == sorted(history.seconds)
    assert not model.training


def test_estimate_loss_is_deterministic_and_perplexity():
    model = GPT(GPTConfig.tiny(vocab_size=8, block_size=8))
    tokens = torch.randint(0, 8, (500,), generator=torch.Generator().manual_seed(0))
    a = estimate_loss(model, tokens, block_size=8, batch_size=4, n_batches=3, seed=5)
    b = estimate_loss(model, tokens, block_size=8, batch_size=4, n_batches=3, seed=5)
    assert a == b
    assert perplexity(math.log(8)) == pytest.approx(8.0)


def test_generic_train_with_custom_batches_and_loss():
    """The loop trains any model through batch_fn / loss_fn: here the encoder-decoder on sorting."""
    torch.manual_seed(0)
    task = make_sort_task(256, min_len=2, max_len=5, vocab=6, seed=0)
    model = EncoderDecoder(Seq2SeqConfig.tiny(src_vocab_size=task.vocab_size, tgt_vocab_size=task.vocab_size))

    def batch_fn(split, generator):
        rows = torch.randint(0, len(task), (32,), generator=generator)
        return task.src[rows], task.tgt_in[rows], task.tgt_out[rows]

    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        return model(*batch).loss

    history = train(model, TrainConfig.tiny(steps=40, eval_every=20), batch_fn, loss_fn, device="cpu",
                    progress_bar=False, has_val=False)
    assert history.train_loss[-1] < 0.7 * history.train_loss[0]
    assert all(math.isnan(v) for v in history.val_loss)
    assert len(calls) == 40 + 3 * 2  # 40 steps + 3 evaluations of 2 batches
    assert history.tokens_seen[-1] == 40 * 32 * 5  # src elements per batch


def _english_fraction(text: str, vocabulary: set[str]) -> float:
    words = [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3]
    return sum(w in vocabulary for w in words) / max(1, len(words))


def test_tiny_gpt_ships_with_the_package_and_writes_english_ish_text(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path))  # an empty cache: loading must not need it
    model, tok = tiny_gpt()
    assert not any(tmp_path.iterdir()), "tiny_gpt() wrote to the cache"
    assert model.num_parameters() == 644_480
    summary = model.training_summary
    assert 1.7 < summary["val_loss"] < 1.85, summary  # the shipped run: 1.80
    assert summary["threads"] == TINY_GPT_THREADS, summary

    corpus = load_corpus()
    vocabulary = set(re.findall(r"[a-z]+", corpus.lower()))
    prompt = torch.tensor([tok.encode("Return the ")])
    sample = tok.decode(model.generate(prompt, 300, temperature=0.8, generator=torch.Generator().manual_seed(0))[0])
    untrained = GPT(model.config)
    noise = tok.decode(untrained.generate(prompt, 300, generator=torch.Generator().manual_seed(0))[0])
    assert _english_fraction(noise, vocabulary) < 0.3  # random characters rarely form words
    assert _english_fraction(sample, vocabulary) > 0.55, sample


def test_shipped_tiny_gpt_val_loss_is_what_its_card_says():
    """The summary is not just a number in a JSON file: the shipped weights score it on the held-out text."""
    from llmcourse.data import CharTokenizer, train_val_split

    model, tok = tiny_gpt()
    text = load_corpus()
    assert tok.state_dict() == CharTokenizer.fit(text).state_dict()
    _, val_tokens = train_val_split(tok.encode(text), val_fraction=0.1)
    loss = estimate_loss(model, val_tokens, model.config.block_size, batch_size=16, n_batches=20, seed=3)
    assert abs(loss - model.training_summary["val_loss"]) < 0.05, (loss, model.training_summary)


def test_damaged_tiny_gpt_is_refused(tmp_path):
    import shutil

    folder = tmp_path / "tiny_gpt"
    shutil.copytree(TINY_GPT_DIR, folder)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last weight
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors has sha256 .* expected " + TINY_GPT_SHA256["model.safetensors"]):
        load_tiny_gpt(folder)
    shutil.copy(TINY_GPT_DIR / "model.safetensors", folder)
    load_tiny_gpt(folder)  # repaired
    meta = folder / "config.json"
    meta.write_text(meta.read_text().replace('"val_loss": 1.8048', '"val_loss": 1.7'))  # an edited summary
    with pytest.raises(ValueError, match="config.json has sha256"):
        load_tiny_gpt(folder)
    load_tiny_gpt(folder, sha256=None)  # the same file loads when the caller opts out of the check
    with pytest.raises(FileNotFoundError, match="no tiny-GPT checkpoint"):
        load_tiny_gpt(tmp_path / "missing")


def test_train_tiny_gpt_never_writes_into_a_full_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        train_tiny_gpt(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="is a file"):
        train_tiny_gpt(tmp_path / "keep.txt")


@pytest.mark.slow
def test_retraining_lands_near_the_shipped_tiny_gpt(tmp_path):
    """The recipe still makes the shipped model, within the chaos of 1000 steps (never bit-equal:
    thread count, instruction set and library versions change the last bits)."""
    shipped, _ = tiny_gpt()
    model, _ = train_tiny_gpt(tmp_path / "retrained")
    assert model.config == shipped.config
    assert abs(model.training_summary["val_loss"] - shipped.training_summary["val_loss"]) < 0.03, (
        model.training_summary, shipped.training_summary)
