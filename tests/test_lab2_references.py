"""The references behind Lab 2's hidden tests are right, and its test helpers behave.

Lab 2 grades students against ``llmcourse.lora`` (the LoRA layer, injection, merging), peft (LoRA and prompt
tuning on a tiny Llama), Hugging Face's own loss (label masking) and published parameter counts. Here each
of those references is checked against an independent one (the LoRA formula in float64, hand-written
cross-entropy, counts from the architecture's formula), and the helper cell the test cells rely on
(``reference_parts``, ``lora_llama``, ``peft_lora``, ``peft_prompt_tuning``, ``expect_close``...) is run on
its own. Then every test cell runs in-process against the solution, the untouched lab, each mistake of
``tests/labs/lab2_fine_tuning.py`` and other correct answers. The end-to-end grading of the lab (solution,
release, wrong submissions, in kernels) is in ``tests/test_grading.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from coursekit import grading
from llmcourse import lora
from llmcourse import prompt_tuning as pt

from conftest import REPO, graded_cells, lab_spec, run_lab_in_process

LAB_PY = REPO / "solutions" / "lab2_fine_tuning" / "lab2_fine_tuning.py"
# peft calls a deprecated transformers method; the lab's quiet() hides it in the notebook, not here.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def _mistakes() -> dict:
    return lab_spec("lab2_fine_tuning").MISTAKES


def _lab_namespace(answers: dict[str, str], run_tests: bool = False) -> tuple[dict, set[str]]:
    return run_lab_in_process(LAB_PY, answers, run_tests)


@pytest.fixture(scope="module")
def lab() -> dict:
    """The lab's setup and helper cells plus the solution's answers, executed in one namespace."""
    return _lab_namespace(grading.answers_from_solution(LAB_PY))[0]


# ----------------------------------------------------------------------------- LoRA references
@pytest.mark.parametrize("I, O, r, alpha, lead, bias", [(6, 4, 2, 4, (3,), True), (5, 7, 1, 1, (2, 3), True),
                                                        (16, 8, 8, 1, (1, 1), False), (4, 12, 5, 2.5, (), True)])
def test_reference_lora_layer_is_the_formula(I, O, r, alpha, lead, bias):
    """h = W x + b + (alpha / r) B A x, in float64 by hand, for the layer the hidden tests compare with."""
    torch.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(I, O, bias=bias), r=r, alpha=alpha)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(*lead, I)
    W, A, B = (t.detach().double() for t in (layer.base.weight, layer.lora_A.weight, layer.lora_B.weight))
    want = x.double() @ W.T + (alpha / r) * x.double() @ A.T @ B.T
    if bias:
        want = want + layer.base.bias.detach().double()
    torch.testing.assert_close(layer(x).double(), want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(layer(x), layer.base(x)), "a non-zero B must change the output"


def test_reference_lora_layer_freezes_its_base(lab):
    base = nn.Linear(5, 3)
    layer = lab["ReferenceLoRALinear"](base, 2, 4, 0.25)
    assert layer.base is base and layer.scaling == 2.0 and layer.lora_dropout.p == 0.25
    assert lab["trainable_names"](layer) == {"lora_A.weight", "lora_B.weight"}


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("o_proj", "gate_proj", "down_proj")])
def test_lora_llama_and_peft_lora_agree(lab, targets):
    """The helper's adapted model has visible adapters, and peft given its adapter computes the same logits
    as the LoRA formula applied layer by layer (merged into a plain copy of the model)."""
    model, names = lab["lora_llama"](seed=7, targets=targets, r=3, alpha=6)
    assert names and all(n.rsplit(".", 1)[-1] in targets for n in names)
    assert all(bool((model.get_submodule(n).lora_B.weight != 0).all()) for n in names)
    ids = torch.randint(0, 97, (2, 6))
    plain = lab["tiny_llama"](7)
    with torch.no_grad():
        ours = model(ids).logits
        assert not torch.allclose(ours, plain(ids).logits, atol=1e-3), "the adapters must matter"
        theirs = lab["peft_lora"](lab["tiny_llama"](7), targets, 3, 6, adapter_from=model)(ids).logits
        for n in names:  # W + (alpha / r) B A, by hand, in a fresh copy of the base model
            m = model.get_submodule(n)
            plain.get_submodule(n).weight += 2.0 * m.lora_B.weight.double().mm(m.lora_A.weight.double()).float()
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(plain(ids).logits, ours, atol=1e-4, rtol=1e-4)


def test_tiny_llama_layout_matches_the_lab_text(lab):
    model = lab["tiny_llama"](0)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (48, 48) and attn.k_proj.weight.shape == (16, 48)
    assert attn.v_proj.weight.shape == (16, 48) and len(model.model.layers) == 2
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    tied = lab["tiny_llama"](0, tie=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    # the visible count test's formula, and the state_dict trap it sets
    V, C, L, d_ff, kv = 97, 48, 2, 80, 16
    expected = V * C + L * (C * C + 2 * C * kv + C * C + 3 * C * d_ff + 2 * C) + C
    assert sum(p.numel() for p in tied.parameters()) == expected
    assert sum(t.numel() for t in tied.state_dict().values()) == expected + V * C


def test_smollm2_shaped_llama_is_smollm2(lab):
    """134,515,008 parameters (Hugging Face's count for SmolLM2-135M); and, when the converted checkpoint
    is cached, the same configuration as the real model."""
    model = lab["smollm2_shaped_llama"]()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert next(model.parameters()).is_meta
    c = model.config
    assert lora.lora_parameter_count([(c.hidden_size, c.hidden_size), (3 * 64, c.hidden_size)] * c.num_hidden_layers, 8) \
        == 460_800
    from llmcourse.utils import cache_dir

    cached = cache_dir() / "smollm2-135m-instruct" / "config.json"  # cache_dir(name) would create the folder
    if cached.is_file():
        import json

        real = json.loads(cached.read_text())
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "tie_word_embeddings"):
            assert real[key] == getattr(c, key), key


def test_peft_prompt_tuning_prompt_is_the_one_peft_reads(lab):
    """The (P, C) weights the helper returns are what peft puts before the input: llmcourse's prompt tuning
    with those weights gives peft's logits."""
    theirs, virtual = lab["peft_prompt_tuning"](lab["tiny_llama"](3), 4)
    assert virtual.shape == (4, 48)
    ours = pt.PromptTuningLM(lab["tiny_llama"](3), pt.SoftPrompt(4, 48, init=virtual))
    ids = torch.randint(0, 97, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(input_ids=ids).logits[:, 4:], atol=1e-5, rtol=1e-4)


def test_hugging_face_loss_is_the_masked_shifted_cross_entropy(lab):
    """What the label tests rely on: a Llama's loss with labels aligned to input_ids is the mean
    cross-entropy of predicting labels[t + 1] at position t, skipping -100 (written out with log_softmax)."""
    model = lab["tiny_llama"](5)
    ids = torch.tensor([[4, 5, 6, 7, 8, 9, 10]])
    labels = torch.tensor([[-100, -100, -100, 7, 8, 9, 10]])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
        loss = model(input_ids=ids, labels=labels).loss
    logp = logits.log_softmax(-1)
    by_hand = -sum(logp[t - 1, int(labels[0, t])] for t in range(3, 7)) / 4
    torch.testing.assert_close(loss.double(), by_hand, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- helper behaviour
def test_reference_parts_swaps_and_restores(lab):
    mine = lab["LoRALinear"]
    had_merge = lab.pop("merge_lora")
    try:
        with lab["reference_parts"]("LoRALinear"):
            assert lab["LoRALinear"] is lab["ReferenceLoRALinear"]
        assert lab["LoRALinear"] is mine
        with lab["reference_parts"](LoRALinear=lora.LoRALinear, merge_lora=lora.merge_lora):
            assert lab["LoRALinear"] is lora.LoRALinear and lab["merge_lora"] is lora.merge_lora
        assert "merge_lora" not in lab, "a part the student never defined must be removed again"
        with pytest.raises(AssertionError), lab["reference_parts"]("LoRALinear"):
            raise AssertionError("a failing test inside the block")
        assert lab["LoRALinear"] is mine, "the student's class must come back after a failing test"
    finally:
        lab["merge_lora"] = had_merge


def test_load_parameters_explains_a_wrong_layout(lab):
    wrong = nn.Module()
    wrong.A = nn.Linear(4, 2, bias=False)
    with pytest.raises(AssertionError, match="has no parameter 'lora_A.weight'"):
        lab["load_parameters"](wrong, {"lora_A.weight": torch.zeros(2, 4)})
    layer = lora.LoRALinear(nn.Linear(4, 3), r=2)
    with pytest.raises(AssertionError, match=r"'lora_A.weight' has shape \(2, 4\), expected \(4, 2\)"):
        lab["load_parameters"](layer, {"lora_A.weight": torch.zeros(4, 2)})


def test_expect_close_messages_do_not_reveal_expected_values(lab):
    expect_close = lab["expect_close"]
    expected = torch.tensor([0.123456, 0.654321])
    expect_close(expected + 1e-7, expected, "close enough")
    with pytest.raises(AssertionError) as err:
        expect_close(torch.tensor([0.5, 0.654321]), expected, "the output")
    assert "1 of 2 values are wrong" in str(err.value) and "0.1234" not in str(err.value)
    with pytest.raises(AssertionError, match=r"shape \(3,\), expected \(2,\)"):
        expect_close(torch.zeros(3), expected, "the output")
    with pytest.raises(AssertionError, match="expected a torch.Tensor, got list"):
        expect_close([0.1, 0.2], expected, "the output")


def test_solution_passes_every_test_cell_silently(capfd):
    """The solution's test cells (hidden tests included, peft imported and used) pass and write nothing to
    stderr: no warning, no progress bar."""
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # every warning shows, unless the lab's own quiet() silences it
        _, failed = _lab_namespace(grading.answers_from_solution(LAB_PY), run_tests=True)
    assert not failed
    assert capfd.readouterr().err == ""


# ----------------------------------------------------------------------------- the test cells, in-process
# A quick version of tests/test_grading.py (no kernels, no nbgrader) that checks every mistake on its own.
def test_unanswered_lab_fails_every_test_cell():
    _, failed = _lab_namespace({}, run_tests=True)
    assert failed == graded_cells(LAB_PY)


@pytest.mark.parametrize("name", sorted(_mistakes()))
def test_each_mistake_fails_exactly_its_test_cells(name):
    mistake = _mistakes()[name]
    answers = {**grading.answers_from_solution(LAB_PY), **mistake["answers"]}
    _, failed = _lab_namespace(answers, run_tests=True)
    assert failed == mistake["fails"]


# Other correct answers, written the ways students do: the tests must accept every one of them.
ALTERNATIVE_ANSWERS = {
    "functional_and_hasattr": {
        "lora_answer": '''
class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        base.weight.requires_grad = False
        if base.bias is not None:
            base.bias.requires_grad = False
        self.base, self.r, self.alpha = base, r, alpha
        self.scaling = float(alpha) / float(r)
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        with torch.no_grad():
            self.lora_B.weight.zero_()
        self.lora_dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x):
        y = F.linear(x, self.base.weight, self.base.bias)
        if not self.merged:
            y = y + self.scaling * (self.lora_dropout(x) @ self.lora_A.weight.T @ self.lora_B.weight.T)
        return y
''',
        "inject_answer": '''
def inject_lora(model, target_modules, r, alpha, dropout=0.0):
    replaced = []

    def visit(module, prefix):
        for child_name, child in list(module.named_children()):
            full = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, nn.Linear) and child_name in target_modules:
                setattr(module, child_name, LoRALinear(child, r, alpha, dropout))
                replaced.append(full)
            else:
                visit(child, full)

    visit(model, "")
    if len(replaced) == 0:
        raise ValueError("nothing to adapt")
    for name, p in model.named_parameters():
        p.requires_grad = "lora_A" in name or "lora_B" in name
    return replaced
''',
        "count_answer": '''
def count_parameters(model):
    unique = {id(p): p for p in model.parameters()}
    return [sum(p.numel() for p in unique.values() if p.requires_grad), sum(p.numel() for p in unique.values())]
''',
        "merge_answer": '''
def merge_lora(model):
    count = 0
    for m in model.modules():
        if hasattr(m, "lora_A") and hasattr(m, "merged") and not m.merged:
            m.base.weight.data += (m.lora_B.weight.data @ m.lora_A.weight.data) * m.scaling
            m.merged = True
            count += 1
    return count


def unmerge_lora(model):
    count = 0
    for m in model.modules():
        if hasattr(m, "lora_A") and getattr(m, "merged", False):
            m.base.weight.data -= (m.lora_B.weight.data @ m.lora_A.weight.data) * m.scaling
            m.merged = False
            count += 1
    return count
''',
        "soft_prompt_answer": '''
class SoftPrompt(nn.Module):
    def __init__(self, n_virtual, dim, init=None):
        super().__init__()
        self.n_virtual = n_virtual
        self.weight = nn.Parameter(torch.randn(n_virtual, dim) if init is None else init.clone().detach().float())

    def forward(self, inputs_embeds, attention_mask=None):
        batch = inputs_embeds.size(0)
        virtual = self.weight.unsqueeze(0).repeat(batch, 1, 1).type_as(inputs_embeds)
        out = torch.cat((virtual, inputs_embeds), dim=1)
        if attention_mask is None:
            return out, None
        ones = torch.ones(batch, self.n_virtual, dtype=attention_mask.dtype, device=attention_mask.device)
        return out, torch.cat((ones, attention_mask), dim=1)
''',
        "example_answer": '''
def build_example(prompt_ids, completion_ids, eos_id):
    ids = [*prompt_ids, *completion_ids, eos_id]
    return {"input_ids": ids, "labels": [-100 if i < len(prompt_ids) else t for i, t in enumerate(ids)]}
''',
        "collate_answer": '''
from torch.nn.utils.rnn import pad_sequence

def collate(examples, pad_id):
    ids = [torch.tensor(e["input_ids"]) for e in examples]
    return {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_id),
        "attention_mask": pad_sequence([torch.ones_like(t) for t in ids], batch_first=True, padding_value=0),
        "labels": pad_sequence([torch.tensor(e["labels"]) for e in examples], batch_first=True, padding_value=-100),
    }
''',
        "deletion_answer": '''
def random_deletion(text, p, rng):
    words = text.split()
    if len(words) < 2:
        return text
    survivors = []
    for word in words:
        if rng.uniform(0, 1) > p:
            survivors.append(word)
    if not survivors:
        return words[rng.randint(0, len(words) - 1)]
    return " ".join(survivors)
''',
        "swap_answer": '''
def random_swap(text, n, rng):
    words = text.split()
    if len(words) < 2:
        return text
    for _ in range(n):
        i = rng.randint(0, len(words) - 1)
        j = i
        while j == i:  # as in EDA's code
            j = rng.randint(0, len(words) - 1)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)
''',
    },
}


@pytest.mark.parametrize("name", sorted(ALTERNATIVE_ANSWERS))
def test_other_correct_answers_pass(name):
    answers = {**grading.answers_from_solution(LAB_PY), **ALTERNATIVE_ANSWERS[name]}
    _, failed = _lab_namespace(answers, run_tests=True)
    assert not failed
