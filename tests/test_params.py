"""Tests for llmcourse.params: the calculator against Hugging Face models and our own GPT."""
from __future__ import annotations

import pytest
import torch

from llmcourse.params import PUBLISHED_MODELS, ArchSpec, count_parameters, format_count, spec_from_gpt_config
from llmcourse.transformer import GPT, GPTConfig


def _hf_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # .parameters() counts the tied head once


@pytest.mark.parametrize("name,kwargs", [("gpt2-small", {}), ("gpt2-xl", dict(n_embd=1600, n_layer=48, n_head=25))])
def test_gpt2_counts_equal_hf(name, kwargs):
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):  # no memory, no initialisation: fast even for 1.5B parameters
        hf = GPT2LMHeadModel(GPT2Config(**kwargs))
    assert count_parameters(PUBLISHED_MODELS[name]).total == _hf_count(hf)


def test_published_exact_values():
    assert count_parameters(PUBLISHED_MODELS["gpt2-small"]).total == 124_439_808
    assert count_parameters(PUBLISHED_MODELS["gpt2-xl"]).total == 1_557_611_200
    assert count_parameters(PUBLISHED_MODELS["bert-base"]).total == 109_482_240


def test_bert_base_equals_hf():
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        hf = BertModel(BertConfig())
    assert count_parameters(PUBLISHED_MODELS["bert-base"]).total == _hf_count(hf)


def test_gpt1_equals_hf():
    from transformers import OpenAIGPTConfig, OpenAIGPTModel

    with torch.device("meta"):
        hf = OpenAIGPTModel(OpenAIGPTConfig())
    breakdown = count_parameters(PUBLISHED_MODELS["gpt1"])
    assert breakdown.total == _hf_count(hf)
    assert abs(breakdown.total - 117e6) / 117e6 < 0.01


def test_gpt3_175b_within_one_percent():
    total = count_parameters(PUBLISHED_MODELS["gpt3-175b"]).total
    assert abs(total - 175e9) / 175e9 < 0.01
    assert format_count(total) == "175B"


def test_every_preset_is_close_to_its_reported_size():
    for name, spec in PUBLISHED_MODELS.items():
        total = count_parameters(spec).total
        assert abs(total - spec.reported_params) / spec.reported_params < 0.07, (name, total)


@pytest.mark.parametrize("overrides", [
    {}, dict(bias=False), dict(tie_weights=False), dict(n_kv_heads=2), dict(activation="swiglu"),
    dict(pos_encoding="alibi", norm="post"), dict(d_ff=50, n_layer=3), dict(pos_encoding="sinusoidal", n_kv_heads=1),
])
def test_our_gpt_matches_the_calculator(overrides):
    config = GPTConfig.tiny(**overrides)
    breakdown = count_parameters(spec_from_gpt_config(config))
    assert GPT(config).num_parameters() == breakdown.total
    assert breakdown.total == sum(v for k, v in breakdown.as_dict().items() if k != "total")


def test_breakdown_components():
    b = count_parameters(ArchSpec(vocab_size=100, context_length=10, d_model=8, n_layers=2, n_heads=2))
    assert b.embeddings == 100 * 8 + 10 * 8
    assert b.attention == 2 * (4 * 8 * 8 + 4 * 8)
    assert b.ffn == 2 * (2 * 8 * 32 + 32 + 8)
    assert b.norms == 2 * 2 * 16 + 16
    assert b.head == 0


def test_spec_validation_names_values():
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by n_heads \(3\)"):
        ArchSpec(vocab_size=10, context_length=4, d_model=10, n_layers=1, n_heads=3)
    with pytest.raises(ValueError, match="'moe'"):
        ArchSpec(vocab_size=10, context_length=4, d_model=8, n_layers=1, n_heads=2, ffn="moe")
    assert format_count(124_439_808) == "124.4M" and format_count(1_557_611_200) == "1.56B"
