"""Fine-tuning recipes (llmcourse.finetune): loss masking, greedy decoding, exact match, feature
extraction, storage and memory accounting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmcourse import finetune as ft
from llmcourse.data import CharTokenizer
from llmcourse.data_prep import Example, Template
from llmcourse.lora import LoRAConfig, inject_lora
from llmcourse.prompt_tuning import PromptTuningLM, SoftPrompt
from llmcourse.train import TrainConfig
from llmcourse.transformer import GPT, GPTConfig

TOK = CharTokenizer.fit("0123456789+=\n abcdefghijklmnopqrstuvwxyz:")


def tiny_gpt(seed: int = 0):
    torch.manual_seed(seed)
    return GPT(GPTConfig.tiny(vocab_size=TOK.vocab_size, block_size=24)).eval()


def test_completion_data_masks_prompt_and_padding():
    examples = [Example("1+2=", "3"), Example("10+20=", "30")]
    data = ft.build_completion_data(examples, Template(eos="\n"), TOK)
    text0 = "1+2=3\n"
    assert data.input_ids.shape == (2, len("10+20=30\n") - 1)
    assert TOK.decode(data.input_ids[0, :5]) == text0[:-1]
    # only "3" and "\n" are targets in row 0: predicted from "=" and "3"
    assert data.targets[0].tolist() == [-100, -100, -100, TOK.stoi["3"], TOK.stoi["\n"], -100, -100, -100]
    unmasked = ft.build_completion_data(examples, Template(eos="\n"), TOK, mask_prompt=False)
    assert unmasked.targets[0, :5].tolist() == TOK.encode(text0[1:])
    with pytest.raises(ValueError, match="max_len"):
        ft.build_completion_data(examples, Template(), TOK, max_len=4)


class Echo(nn.Module):
    """A fake LM that always predicts token (last input + 1) mod V: decoding is predictable."""

    def __init__(self, vocab: int = 10):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        logits = torch.nn.functional.one_hot((ids + 1) % self.vocab, self.vocab).float()
        return type("Out", (), {"logits": logits + self.dummy})()


def test_greedy_generate_groups_lengths_and_stops():
    out = ft.greedy_generate(Echo(), [[1], [3, 4], [7], [8, 8]], max_new_tokens=3)
    assert out == [[2, 3, 4], [5, 6, 7], [8, 9, 0], [9, 0, 1]]
    out = ft.greedy_generate(Echo(), [[1], [5]], max_new_tokens=6, stop_id=3)
    assert out == [[2, 3], [6, 7, 8, 9, 0, 1]]
    with pytest.raises(ValueError, match="empty"):
        ft.greedy_generate(Echo(), [[]], 2)


def test_exact_match_parses_until_eos():
    tok = CharTokenizer.fit("0123456789")

    examples = [Example("1", "23"), Example("5", "67"), Example("0", "99")]
    r = ft.exact_match(Echo(), tok, examples, Template(eos="4"), max_new_tokens=4)
    # "1" -> "234": parse up to "4" -> "23" (right); "5" -> "6789" (no eos) -> wrong; "0" -> "1234" -> "123" wrong
    assert r.predictions == ["23", "6789", "123"] and r.accuracy == pytest.approx(1 / 3)


def test_finetune_learns_a_tiny_task():
    """Full fine-tuning of a random tiny GPT memorises four answers (the loop and masking work)."""
    examples = [Example(f"{a}+{b}=", str(a + b)) for a, b in [(1, 2), (3, 4), (5, 1), (2, 2)]]
    tpl = Template(eos="\n")
    model = tiny_gpt()
    data = ft.build_completion_data(examples, tpl, TOK)
    assert ft.exact_match(model, TOK, examples, tpl).accuracy < 0.5
    ft.finetune(model, data, TrainConfig.tiny(steps=150, batch_size=4, lr=1e-2, eval_every=1000), device="cpu")
    assert ft.exact_match(model, TOK, examples, tpl).accuracy == 1.0


def test_new_head_is_feature_extraction():
    model = tiny_gpt()
    lm = ft.NewHeadLM(model)
    ids = torch.randint(0, TOK.vocab_size, (2, 5))
    torch.testing.assert_close(lm(ids).logits, model(ids).logits)  # starts as the base model
    assert [n for n, p in lm.named_parameters() if p.requires_grad] == ["head.weight"]
    assert lm.head.weight.data_ptr() != model.lm_head.weight.data_ptr()  # untied copy
    lm(ids, targets=ids).loss.backward()
    assert lm.head.weight.grad.abs().sum() > 0 and model.wte.weight.grad is None
    with pytest.raises(ValueError, match="wraps"):
        ft.NewHeadLM(nn.Linear(2, 2))


def test_parameter_bytes():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2, bias=False))
    assert ft.parameter_bytes(model) == (110 + 20) * 4
    assert ft.parameter_bytes(model, dtype=torch.bfloat16) == 130 * 2
    model[0].requires_grad_(False)
    assert ft.parameter_bytes(model, trainable_only=True) == 80


def test_training_memory_counts_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)

    def loss_fn(m, batch):
        return m(batch).square().mean()

    mem = ft.training_memory(model, x, loss_fn)
    n = sum(p.numel() for p in model.parameters())
    assert mem.weights == mem.gradients == 4 * n
    assert mem.optimizer == 2 * 4 * n  # AdamW: exp_avg and exp_avg_sq (the step counter is a scalar)
    # saved for backward: x (needed for W1's gradient), the ReLU output (W2's gradient), the ReLU mask or
    # its output, the final output for square(): a few (5, 16)/(5, 4) tensors, not parameters
    assert 5 * 8 * 4 <= mem.activations <= 4 * 4 * (5 * 8 + 3 * 5 * 16 + 5 * 4)
    assert mem.total == sum(mem)
    # freezing the first layer: no gradient or state for it, and x need not be saved
    model[0].requires_grad_(False)
    frozen = ft.training_memory(model, x, loss_fn)
    n2 = sum(p.numel() for p in model[2].parameters())
    assert frozen.gradients == 4 * n2 and frozen.optimizer == 8 * n2
    assert frozen.activations < mem.activations


def test_memory_ordering_full_lora_prompt():
    """On a GPT: LoRA and prompt tuning store far less gradient and optimizer state than full tuning."""
    ids = torch.randint(0, TOK.vocab_size, (4, 12))
    batch = (ids, ids)
    full = ft.training_memory(tiny_gpt(), batch)
    model = tiny_gpt()
    inject_lora(model, LoRAConfig(r=2, target_modules=("q_proj", "v_proj")))
    lora = ft.training_memory(model, batch)
    prompt = ft.training_memory(PromptTuningLM(tiny_gpt(), SoftPrompt(4, 32)), batch)
    assert full.weights < lora.weights  # adapters add a little
    assert lora.gradients < full.gradients / 10 and prompt.gradients == 4 * 4 * 32
    assert lora.optimizer == 2 * lora.gradients and prompt.optimizer == 2 * prompt.gradients
    assert prompt.activations > 0 and lora.activations > 0
