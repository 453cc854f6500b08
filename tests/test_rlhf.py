"""Tests for llmcourse.rlhf: the toy review world and its gold reward, Bradley-Terry and DPO losses against
their formulas, sequence log-probabilities against step-by-step generation, preference sampling, and
the training loops."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse import rlhf
from llmcourse.transformer import GPT, GPTConfig


@pytest.fixture(scope="module")
def tok():
    return rlhf.ReviewTokenizer()


def _gpt(tok, seed=0, d_model=32):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, d_model=d_model))


def _ids(tok, text):
    return torch.tensor([[tok.BOS] + tok.encode(text)])


@pytest.mark.parametrize("text,gold", [
    ("the movie was great and fun .", 2.0),
    ("the food was great and awful .", 0.0),
    ("the hotel was dull and bad .", -2.0),
    ("the book was long and good .", 1.0),
    ("the book was good and good .", 2.0),
    ("was good was fun and fun .", -3.0),  # not a well-formed review
    ("the good was great and fun .", -3.0),  # an adjective where the noun belongs
    ("the movie was great and fun fun", -3.0),  # no full stop
])
def test_gold_reward_by_hand(tok, text, gold):
    assert rlhf.gold_reward(_ids(tok, text), tok).item() == gold


def test_tokenizer_and_reference_data(tok):
    assert tok.decode(_ids(tok, "the movie was fun and bad .")[0]) == "the movie was fun and bad ."
    with pytest.raises(ValueError, match="unknown words"):
        tok.encode("the zebra")
    reviews = rlhf.sample_reviews(200, tok, torch.Generator().manual_seed(0))
    assert reviews.shape == (200, 8) and (reviews[:, 0] == tok.BOS).all()
    gold = rlhf.gold_reward(reviews, tok)
    assert gold.min() >= -2 and gold.max() <= 2 and {-2.0, 2.0} <= set(gold.tolist())
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        rlhf.gold_reward(reviews[:, :5], tok)


def test_bradley_terry_loss():
    rc, rr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 3.0])
    expected = -torch.log(torch.sigmoid(rc - rr)).mean()
    torch.testing.assert_close(rlhf.bradley_terry_loss(rc, rr), expected)
    # The same as logistic regression on the difference with label "chosen wins".
    torch.testing.assert_close(rlhf.bradley_terry_loss(rc, rr),
                               F.binary_cross_entropy_with_logits(rc - rr, torch.ones(3)))
    torch.testing.assert_close(rlhf.bradley_terry_loss(rc + 5, rr + 5), expected)  # only differences matter
    assert rlhf.bradley_terry_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(math.log(2))
    r = torch.zeros(2, requires_grad=True)
    rlhf.bradley_terry_loss(r[:1], r[1:]).backward()
    assert r.grad[0] < 0 < r.grad[1]  # gradient descent raises the chosen reward, lowers the rejected one
    with pytest.raises(ValueError, match="shapes differ"):
        rlhf.bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_dpo_loss():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    beta = 0.5
    expected = -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()
    torch.testing.assert_close(rlhf.dpo_loss(pc, pr, rc, rr, beta), expected)
    # policy == reference: every margin is 0 and the loss is log 2, whatever beta.
    assert rlhf.dpo_loss(pc, pr, pc, pr, 3.0).item() == pytest.approx(math.log(2))
    assert rlhf.dpo_loss(pc, pr, rc, rr, 0.1) != rlhf.dpo_loss(pc, pr, rc, rr, 1.0)
    with pytest.raises(ValueError, match="beta"):
        rlhf.dpo_loss(pc, pr, rc, rr, 0.0)


def test_sequence_logprobs_match_generation_probabilities(tok):
    model = _gpt(tok).eval()
    tokens = rlhf.sample(model, 4, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (4, 8)
    with torch.no_grad():
        total = torch.zeros(4)
        for t in range(1, 8):  # the probability of each sampled token given its prefix, one at a time
            logits = model(tokens[:, :t]).logits[:, -1]
            total += torch.log_softmax(logits, -1).gather(1, tokens[:, t:t + 1]).squeeze(1)
        torch.testing.assert_close(rlhf.sequence_logprobs(model, tokens), total, rtol=1e-5, atol=1e-5)
        partial = rlhf.sequence_logprobs(model, tokens, prompt_len=3)
        head = rlhf.sequence_logprobs(model, tokens[:, :3])
        torch.testing.assert_close(head + partial, total, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prompt_len"):
        rlhf.sequence_logprobs(model, tokens, prompt_len=8)


def test_make_preferences(tok):
    a, b = torch.zeros(1000, 8, dtype=torch.long), torch.ones(1000, 8, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    sure = rlhf.make_preferences(a, b, torch.full((1000,), 20.0), torch.zeros(1000), g)
    assert (sure.chosen == 0).all() and (sure.rejected == 1).all()
    coin = rlhf.make_preferences(a, b, torch.zeros(1000), torch.zeros(1000), g)
    share = (coin.chosen[:, 0] == 0).float().mean().item()
    assert 0.45 < share < 0.55
    one_up = rlhf.make_preferences(a, b, torch.ones(1000), torch.zeros(1000), g)  # sigmoid(1) = 0.73
    assert 0.69 < (one_up.chosen[:, 0] == 0).float().mean().item() < 0.77


def test_reward_model_reads_the_last_token(tok):
    torch.manual_seed(0)
    rm = rlhf.RewardModel(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, d_model=16))
    x = rlhf.sample_reviews(3, tok)
    assert rm(x).shape == (3,)
    y = x.clone()
    y[:, 5] = tok.stoi["great"]
    assert not torch.allclose(rm(x), rm(y))  # earlier tokens reach the last one through attention


def test_rl_train_starts_at_zero_kl_and_moves_the_policy(tok):
    ref = _gpt(tok)
    policy = rlhf.frozen_copy(ref).requires_grad_(True)
    assert not any(p.requires_grad for p in rlhf.frozen_copy(ref).parameters())
    great = tok.stoi["great"]

    class CountGreat(torch.nn.Module):  # a reward that varies even for random text
        def forward(self, tokens):
            return (tokens == great).sum(1).float()

    history = rlhf.rl_train(policy, ref, CountGreat(), tok, rlhf.RLConfig(beta=0.1, steps=3, batch_size=16, lr=1e-2))
    assert len(history.proxy) == len(history.gold) == len(history.kl) == len(history.distinct) == 3
    assert history.kl[0] == pytest.approx(0.0, abs=1e-5)  # first batch: policy == reference
    assert history.proxy[0] > 0 and all(g == -3.0 for g in history.gold)  # random text is never a review
    assert any(not torch.equal(p, q) for p, q in zip(policy.parameters(), ref.parameters()))
    with pytest.raises(ValueError, match="beta"):
        rlhf.RLConfig(beta=-1.0)


def test_dpo_prefers_the_chosen_samples(tok):
    ref = _gpt(tok)
    policy = rlhf.frozen_copy(ref).requires_grad_(True)
    chosen = rlhf.sample_reviews(16, tok, torch.Generator().manual_seed(0))
    rejected = rlhf.sample_reviews(16, tok, torch.Generator().manual_seed(1))
    prefs = rlhf.Preferences(chosen, rejected)
    losses = rlhf.dpo_train(policy, ref, prefs, beta=0.5, steps=20, batch_size=16, lr=3e-3)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4) and losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        margin = (rlhf.sequence_logprobs(policy, chosen) - rlhf.sequence_logprobs(ref, chosen)) - (
            rlhf.sequence_logprobs(policy, rejected) - rlhf.sequence_logprobs(ref, rejected))
    assert (margin > 0).float().mean() > 0.9
