"""Tests for llmcourse.data: the shipped corpus, the tokenizer, batching, seq2seq tasks, MLM masking."""
from __future__ import annotations

import sys

import pytest
import torch

from llmcourse.data import (
    CharTokenizer,
    TokenDataset,
    build_stdlib_corpus,
    exact_match_accuracy,
    get_batch,
    load_corpus,
    make_reverse_task,
    make_sort_task,
    mask_tokens,
    train_val_split,
)


@pytest.fixture(scope="module")
def corpus() -> str:
    return load_corpus()


def test_corpus_loads_and_is_printable_ascii(corpus):
    assert 1_500_000 < len(corpus) < 3_000_000
    assert set(corpus) <= {chr(c) for c in range(32, 127)} | {"\n"}
    assert "module json" in corpus and "Return" in corpus


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the shipped corpus was built with CPython 3.11")
def test_builder_reproduces_shipped_corpus(corpus):
    assert build_stdlib_corpus() == corpus


def test_builder_respects_max_chars():
    text = build_stdlib_corpus(max_chars=5000)
    assert 0 < len(text) <= 5000 and text.endswith("\n\n")
    with pytest.raises(ValueError, match="-1"):
        build_stdlib_corpus(max_chars=-1)


def test_char_tokenizer_roundtrip_and_state(corpus):
    tok = CharTokenizer.fit(corpus)
    sample = corpus[1000:1500]
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample and tok.decode(torch.tensor(ids)) == sample
    assert tok.vocab_size == len(set(corpus)) and max(ids) < tok.vocab_size
    restored = CharTokenizer.from_state_dict(tok.state_dict())
    assert restored.encode(sample) == ids
    with pytest.raises(ValueError, match="'\u00e9'"):
        tok.encode("caf\u00e9")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


@pytest.mark.parametrize("block_size,batch_size", [(1, 1), (7, 3), (16, 5)])
def test_get_batch_targets_are_shifted_inputs(block_size, batch_size):
    data = torch.arange(100)
    x, y = get_batch(data, block_size, batch_size, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (batch_size, block_size)
    assert torch.equal(y, x + 1)  # data[i] = i, so the next token is always one more
    again = get_batch(data, block_size, batch_size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.x, x)
    with pytest.raises(ValueError, match="block_size=100"):
        get_batch(data, 100, 2)


def test_token_dataset_and_split():
    tokens = torch.arange(20)
    ds = TokenDataset(tokens, 4)
    assert len(ds) == 16
    x, y = ds[15]
    assert torch.equal(x, torch.arange(15, 19)) and torch.equal(y, torch.arange(16, 20))
    with pytest.raises(IndexError):
        ds[16]
    train, val = train_val_split(tokens, 0.25)
    assert torch.equal(torch.cat([train, val]), tokens) and len(val) == 5
    with pytest.raises(ValueError, match="1.5"):
        train_val_split(tokens, 1.5)


@pytest.mark.parametrize("maker", [make_sort_task, make_reverse_task])
def test_seq2seq_tasks_have_exact_answers(maker):
    task = maker(50, min_len=1, max_len=7, vocab=5, seed=3)
    assert task.src.shape == (50, 7) and task.tgt_in.shape == task.tgt_out.shape == (50, 8)
    assert task.vocab_size == 8
    for i in range(50):
        seq = task.src[i][task.src[i] != task.pad_id]
        expected = seq.sort().values if maker is make_sort_task else seq.flip(0)
        L = len(seq)
        assert 1 <= L <= 7
        assert task.tgt_in[i, 0] == task.bos_id and torch.equal(task.tgt_in[i, 1 : L + 1], expected)
        assert torch.equal(task.tgt_out[i, :L], expected) and task.tgt_out[i, L] == task.eos_id
        assert (task.tgt_out[i, L + 1 :] == task.pad_id).all()
    assert torch.equal(maker(50, 1, 7, 5, seed=3).src, task.src)  # deterministic
    assert len(task[:10]) == 10


def test_exact_match_accuracy():
    task = make_reverse_task(4, 2, 5, seed=0)
    assert exact_match_accuracy(task.tgt_out, task.tgt_out) == 1.0
    wrong = task.tgt_out.clone()
    wrong[0, 0] = (wrong[0, 0] + 1 - 3) % 10 + 3
    assert exact_match_accuracy(wrong, task.tgt_out) == 0.75
    short = task.tgt_out[:, :3]  # predictions cut before the EOS are wrong unless the answer is that short
    lengths = (task.tgt_out != 0).sum(1)
    assert exact_match_accuracy(short, task.tgt_out) == (lengths <= 3).float().mean().item()


def test_mask_tokens_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (200, 50), generator=g)
    ids[:, 0] = 0  # a special token (e.g. CLS) that is never masked
    inputs, labels = mask_tokens(ids, mask_id=1, vocab_size=100, p=0.15, generator=g, special_ids=[0])
    selected = labels != -100
    assert abs(selected.float().mean().item() - 0.15) < 0.01
    assert not selected[:, 0].any()
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected tokens untouched
    masked = (inputs == 1) & selected
    unchanged = (inputs == ids) & selected
    frac_mask = masked.sum().item() / selected.sum().item()
    frac_same = unchanged.sum().item() / selected.sum().item()
    assert abs(frac_mask - 0.8) < 0.03
    assert abs(frac_same - 0.1) < 0.03  # (a random replacement rarely equals the original too)
    with pytest.raises(ValueError, match="mask_id \\(100\\)"):
        mask_tokens(ids, mask_id=100, vocab_size=100)
