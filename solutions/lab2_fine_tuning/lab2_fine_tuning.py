# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/labs/lab2_fine_tuning/lab2_fine_tuning.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # Lab 2: Parameter-efficient fine-tuning from scratch
#
# Module 2 adapted pretrained models to new tasks without touching most of their weights: LoRA learns a
# small low-rank update next to a frozen matrix, prompt tuning learns a few input vectors, and good data
# matters as much as either. In this lab you write those pieces yourself, and the tests compare them with
# the course's versions and with Hugging Face's `peft` library, given identical weights.
#
# | Part | You write | Points |
# |---|---|---|
# | 1 | `LoRALinear(base, r, alpha, dropout=0.0)`: a frozen linear layer plus a low-rank update | 3 + 2 |
# | 2 | `inject_lora(model, target_modules, r, alpha, dropout=0.0)`: LoRA in chosen projections | 3 |
# | 3 | `count_parameters(model)`: trainable and total parameters | 2 |
# | 4 | `merge_lora(model)`, `unmerge_lora(model)`: zero extra latency, and back | 3 |
# | 5 | `SoftPrompt(n_virtual, dim, init=None)`: virtual tokens and their attention mask | 3 + 2 |
# | 6 | `build_example(prompt_ids, completion_ids, eos_id)`, `collate(examples, pad_id)`: loss on the answer only | 2 + 2 |
# | 7 | `random_deletion(text, p, rng)`, `random_swap(text, n, rng)`: data augmentation | 2 + 2 |
#
# **How this lab works**
#
# - Write your code in the answer cells, where it says `# YOUR CODE HERE` (delete the
#   `raise NotImplementedError()`). Keep the names, signatures and attribute names the instructions give:
#   the tests call them and copy weights into your modules by those names.
# - After each answer come one or two test cells. Run them: no output means the visible checks passed;
#   an `AssertionError` says what to fix. When grading, the same cells also run **hidden tests**: other
#   sizes, ranks and scalings, gradients, a comparison with `peft` on a small Llama model, and the mistakes
#   people usually make. A part is done when it is correct in general, not just on the visible examples.
# - **Each part is graded on its own.** Where a part builds on an earlier one (injection and merging use
#   your LoRA layer), its tests swap in the course's version of the earlier part
#   (`with reference_parts(...)` below). A mistake costs the points of one part, never two.
# - Use PyTorch (`nn.Linear`, `nn.Dropout`, `nn.Parameter`, `torch.cat`, `@`, ...) and Python's `random`,
#   but not `peft` or `llmcourse` in your answers: writing them is the point.
# - Before you submit: *Kernel → Restart Kernel and Run All Cells*, and check that every test cell runs.
#
# The demos behind each part: `04_lora` (parts 1-4), `02_prompt_tuning` (part 5), `01_fine_tuning`
# (part 6) and `06_data_preparation` (part 7). Shape letters: `B` batch, `T` tokens, `I` input features,
# `O` output features, `R` rank, `P` virtual tokens, `C` model width.

# %% [markdown]
# ## Setup
#
# The first cell imports what you need. The second defines the helpers the test cells use: a comparison
# with readable messages, a tiny Llama model built from a configuration (random weights, no download), and
# the course's versions of the parts that stand in for yours while a later part is tested. Run both; do
# not edit them (they are locked and restored when grading).

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false}
import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.utils import quiet, seed_everything

quiet()  # before transformers and peft are imported: no warnings or progress bars
seed_everything(0)

# %% nbgrader={"grade": false, "grade_id": "test_helpers", "locked": true, "schema_version": 3, "solution": false}
# Helpers for the test cells. Nothing here gives away an answer: the course's LoRA layer only ever stands
# in for *your* Part 1 while a later part is being tested.
import contextlib

from transformers import LlamaConfig, LlamaForCausalLM

from llmcourse import lora as ref_lora


def expect_close(actual, expected, what, atol=1e-5, rtol=1e-4):
    """Assert that tensor `actual` has `expected`'s shape and values; the message says what differs."""
    assert isinstance(actual, torch.Tensor), f"{what}: expected a torch.Tensor, got {type(actual).__name__}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    close = torch.isclose(actual, expected, rtol=rtol, atol=atol)
    if not bool(close.all()):
        n_nan = int(actual.isnan().sum())
        worst = (actual - expected).abs().nan_to_num(nan=float("inf")).max().item()
        hint = f" ({n_nan} NaN)" if n_nan else ""
        raise AssertionError(f"{what}: {int((~close).sum())} of {close.numel()} values are wrong{hint}, "
                             f"largest difference {worst:.3g}")


def tiny_llama(seed=0, tie=False, vocab_size=97):
    """A random 2-layer Llama (width 48, 6 query heads sharing 2 key/value heads: q_proj is 48 -> 48,
    k_proj and v_proj 48 -> 16), in eval mode. `tie=True` shares the embedding with the output head."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


def smollm2_shaped_llama():
    """SmolLM2-135M's architecture on the `meta` device: every parameter has its real shape but no memory
    and no values, so it can be counted (and adapted) without downloading or allocating anything."""
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         tie_word_embeddings=True)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def load_parameters(module, params):
    """Copy `params` ({name: tensor}, named as in the instructions) into `module`, checking the layout."""
    own = dict(module.named_parameters())
    for name, value in params.items():
        assert name in own, (f"{type(module).__name__} has no parameter '{name}' of shape {tuple(value.shape)}: "
                             "follow the attribute names given in the instructions")
        assert own[name].shape == value.shape, (
            f"parameter '{name}' has shape {tuple(own[name].shape)}, expected {tuple(value.shape)}")
        with torch.no_grad():
            own[name].copy_(value)


def trainable_names(model):
    """The names of the parameters that would be trained (requires_grad)."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


class ReferenceLoRALinear(ref_lora.LoRALinear):
    """The course's LoRA layer with this lab's signature and layout (base, lora_A, lora_B, scaling, merged);
    like Part 1 asks, it freezes its base layer."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, r=r, alpha=alpha, dropout=dropout)
        base.requires_grad_(False)


def lora_llama(seed=0, targets=("q_proj", "v_proj"), r=4, alpha=8, tie=False):
    """A tiny Llama adapted by the course's LoRA on `targets`, with random B matrices (B = 0 would make
    every adapter invisible). Returns (model, names of the adapted layers)."""
    model = tiny_llama(seed, tie)
    names = ref_lora.inject_lora(model, ref_lora.LoRAConfig(r=r, alpha=alpha, target_modules=targets))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name in names:
            layer = model.get_submodule(name)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * 0.5)
    return model, names


def peft_lora(model, targets, r, alpha, adapter_from=None):
    """`model` adapted by peft's LoraConfig; with `adapter_from` (a model adapted by LoRA layers with the
    lab's layout), peft's adapters get exactly those lora_A and lora_B weights."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    theirs = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets)))
    if adapter_from is not None:
        adapter = {name: p.detach().clone() for name, p in adapter_from.named_parameters()
                   if name.endswith(("lora_A.weight", "lora_B.weight"))}
        set_peft_model_state_dict(theirs, ref_lora.to_peft_state_dict(adapter))
    return theirs.eval()


def peft_prompt_tuning(model, n_virtual):
    """`model` with peft's prompt tuning (random virtual tokens); returns (peft model, its (P, C) prompt)."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    theirs = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n_virtual))
    return theirs.eval(), theirs.prompt_encoder.default.embedding.weight.detach().clone()


@contextlib.contextmanager
def reference_parts(*names, **replacements):
    """Inside this block, the named earlier parts are the course's versions (yours come back after).
    `replacements` name other stand-ins: reference_parts(LoRALinear=some_class)."""
    space = globals()  # the notebook's namespace, where your answers live
    makers = {"LoRALinear": ReferenceLoRALinear}
    wanted = {**{name: makers[name] for name in names}, **replacements}
    saved = {name: space[name] for name in wanted if name in space}
    space.update(wanted)
    try:
        yield
    finally:
        for name in wanted:
            if name in saved:
                space[name] = saved[name]
            else:
                space.pop(name, None)


# %% [markdown]
# ## Part 1. A LoRA linear layer (5 points)
#
# Fine-tuning changes a pretrained weight $W$ (shape `(O, I)`) into $W + \Delta W$. LoRA (Hu et al. 2021)
# bets that the useful $\Delta W$ has a **low rank** $r$, and learns it as a product of two thin matrices:
#
# $$ h = W x + \frac{\alpha}{r}\, B A x, \qquad A \in \mathbb{R}^{r \times I},\ B \in \mathbb{R}^{O \times r}. $$
#
# $W$ (and its bias) stays **frozen**: only $A$ and $B$, $r (I + O)$ numbers instead of $I \cdot O$, are
# trained. Three details make it work:
#
# - **B starts at zero, A at random.** Then $BA = 0$: at step 0 the adapted model *is* the pretrained
#   model, and training starts from where pretraining ended. (If both were zero, no gradient would ever
#   reach either; if both were random, the model would start damaged.)
# - **The scale $\alpha / r$.** The update is multiplied by $\alpha / r$ (not $r / \alpha$), so that its
#   size barely depends on the rank and a learning rate tuned at one rank still works at another.
# - **Dropout on the adapter's input only**, during training: `B(A(dropout(x)))`. The frozen path
#   `W x` never sees dropout.
#
# **Write** the class `LoRALinear(base, r, alpha, dropout=0.0)`, where `base` is an `nn.Linear` (with or
# without a bias). Use exactly these attributes (the tests copy weights into them, and peft uses the
# same names):
#
# - `self.base`: the `base` layer itself (not a copy), with all its parameters frozen
#   (`requires_grad = False`);
# - `self.lora_A = nn.Linear(I, r, bias=False)` with its default (random) initialisation, and
#   `self.lora_B = nn.Linear(r, O, bias=False)` with its weight set to zeros; `I` and `O` are
#   `base.in_features` and `base.out_features`;
# - `self.scaling`, the number $\alpha / r$; `self.lora_dropout = nn.Dropout(dropout)`;
# - `self.merged = False`: Part 4 sets it to `True` after adding $\frac{\alpha}{r} BA$ into
#   `base.weight`; while it is `True`, `forward` must return `self.base(x)` alone (the update is already
#   inside the weight).
#
# `forward(x)`: `x` has shape `(..., I)` (any number of leading dimensions), the output `(..., O)`.

# %% nbgrader={"grade": false, "grade_id": "lora_answer", "locked": false, "schema_version": 3, "solution": true}
class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * lora_B(lora_A(lora_dropout(x))), with base frozen. x (..., I) -> (..., O)."""

    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        ### BEGIN SOLUTION
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)  # the pretrained weights never change
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Linear(base.in_features, r, bias=False)  # random (nn.Linear's Kaiming-uniform)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)  # B A = 0: the adapted layer starts as the base layer
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False
        ### END SOLUTION

    def forward(self, x):
        ### BEGIN SOLUTION
        out = self.base(x)  # (..., O)
        if self.merged:  # the update is already inside base.weight
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling  # (..., I) -> (..., R) -> (..., O)
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "lora_layer_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
torch.manual_seed(1)
base = nn.Linear(6, 4)
layer = LoRALinear(base, r=2, alpha=4)
assert layer.base is base, "self.base must be the layer you were given (not a copy)"
assert layer.lora_A.weight.shape == (2, 6), f"lora_A.weight has shape {tuple(layer.lora_A.weight.shape)}, expected (r, I) = (2, 6)"
assert layer.lora_B.weight.shape == (4, 2), f"lora_B.weight has shape {tuple(layer.lora_B.weight.shape)}, expected (O, r) = (4, 2)"
assert bool((layer.lora_B.weight == 0).all()), "B must start at zero"
assert bool((layer.lora_A.weight != 0).any()), "A must start random (with A = 0 too, no gradient would ever reach B)"
assert layer.merged is False, "self.merged must start as False"

x = torch.randn(3, 6)
expect_close(layer(x), base(x), "output at initialisation (B = 0, so it must equal base(x))")
with torch.no_grad():
    layer.lora_B.weight.copy_(torch.randn(4, 2))
A, B = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
expect_close(layer(x), base(x) + (4 / 2) * x @ A.T @ B.T, "output with a non-zero B (r = 2, alpha = 4)")
### BEGIN HIDDEN TESTS
def _check_lora_layer(I, O, r, alpha, lead, bias, seed):
    """Same weights as the course's layer and peft's: same outputs, for any leading shape."""
    torch.manual_seed(seed)
    base_ = nn.Linear(I, O, bias=bias)
    theirs = LoRALinear(base_, r=r, alpha=alpha)
    label = f"LoRALinear(nn.Linear({I}, {O}, bias={bias}), r={r}, alpha={alpha})"
    assert bool((theirs.lora_B.weight == 0).all()), f"{label}: B must start at zero"
    assert bool(torch.isfinite(theirs.lora_A.weight).all()) and float(theirs.lora_A.weight.detach().std()) > 0, \
        f"{label}: A must start random"
    ours = ref_lora.LoRALinear(nn.Linear(I, O, bias=bias), r=r, alpha=alpha)
    params_ = {"base.weight": torch.randn(O, I) / math.sqrt(I), "lora_A.weight": torch.randn(r, I) / math.sqrt(I),
               "lora_B.weight": torch.randn(O, r)}
    if bias:
        params_["base.bias"] = torch.randn(O)
    load_parameters(theirs, params_)
    load_parameters(ours, params_)
    x_ = torch.randn(*lead, I)
    expect_close(theirs(x_), ours(x_), f"{label}: output for x of shape {tuple(x_.shape)}")
    assert float(theirs.scaling) == alpha / r, f"{label}: self.scaling must be alpha / r"
    return theirs, params_, x_


for _args in [(6, 4, 2, 4, (3,), True, 101), (5, 7, 1, 1, (2, 3), True, 102), (16, 8, 8, 1, (1, 1), False, 103),
              (9, 3, 3, 27, (2, 1, 4), True, 104), (4, 12, 5, 2.5, (), True, 105)]:
    _check_lora_layer(*_args)

# The same as peft's LoRA layer, given the same weights.
_theirs, _params, _x = _check_lora_layer(10, 6, 4, 16, (2, 5), True, 106)
_wrapper = nn.Sequential()
_wrapper.add_module("proj", nn.Linear(10, 6))
_peft = peft_lora(_wrapper, ["proj"], r=4, alpha=16)
with torch.no_grad():
    _peft.base_model.model.proj.base_layer.weight.copy_(_params["base.weight"])
    _peft.base_model.model.proj.base_layer.bias.copy_(_params["base.bias"])
    _peft.base_model.model.proj.lora_A["default"].weight.copy_(_params["lora_A.weight"])
    _peft.base_model.model.proj.lora_B["default"].weight.copy_(_params["lora_B.weight"])
    expect_close(_theirs(_x), _peft(_x), "output compared with peft's LoRA layer given the same weights")

# While merged, the layer is its base alone.
_theirs.merged = True
expect_close(_theirs(_x), _theirs.base(_x), "output while self.merged is True (must be self.base(x) alone)")
_theirs.merged = False
### END HIDDEN TESTS

# %% [markdown]
# The second test cell checks what makes LoRA *parameter-efficient*: only $A$ and $B$ receive gradients,
# B's gradient is not zero at the first step (so training can start), and dropout only touches the
# adapter's input, only in training mode.

# %% nbgrader={"grade": true, "grade_id": "lora_training_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
torch.manual_seed(2)
base = nn.Linear(8, 5)
layer = LoRALinear(base, r=4, alpha=8, dropout=0.5)
assert trainable_names(layer) == {"lora_A.weight", "lora_B.weight"}, (
    f"trainable parameters: {sorted(trainable_names(layer))}; only lora_A.weight and lora_B.weight may be")
x = torch.randn(3, 8)
layer.train()
expect_close(layer(x), base(x), "output in training mode with B = 0 (dropout must not touch the base path)")
layer(x).pow(2).sum().backward()
assert base.weight.grad is None and base.bias.grad is None, "gradients reached the frozen base layer"
assert layer.lora_B.weight.grad is not None and float(layer.lora_B.weight.grad.abs().sum()) > 0, (
    "B received no gradient at the first step")
layer.eval()
with torch.no_grad():
    layer.lora_B.weight.copy_(torch.randn(5, 4))
expect_close(layer(x), layer(x), "two outputs in eval mode (dropout must be off)")
### BEGIN HIDDEN TESTS
torch.manual_seed(107)
_base = nn.Linear(12, 7)
_layer = LoRALinear(_base, r=3, alpha=3)
_x = torch.randn(4, 12)
_layer(_x).sum().backward()
assert _layer.lora_A.weight.grad is not None and _layer.lora_B.weight.grad is not None, "A and B must be trainable"
assert _base.weight.grad is None and _base.bias.grad is None, "gradients reached the frozen base layer"
assert not _base.weight.requires_grad and not _base.bias.requires_grad, "the base layer's parameters must be frozen"

# Dropout acts on the adapter's input: with A = identity and every row of B equal, the update of each
# output is the same sum of the (dropped-out) inputs; dropout on the update itself would zero single outputs.
_layer = LoRALinear(nn.Linear(6, 5), r=6, alpha=6, dropout=0.5).train()
load_parameters(_layer, {"lora_A.weight": torch.eye(6), "lora_B.weight": torch.ones(5, 6)})
_x = torch.rand(200, 6) + 0.5  # positive: a dropped input lowers the sum
with torch.no_grad():
    _delta = _layer(_x) - _layer.base(_x)  # (200, 5)
assert bool(torch.isclose(_delta, _delta[:, :1].expand_as(_delta), atol=1e-5).all()), (
    "in training mode, dropout must act on the adapter's input x, not on its output")
_full = _x.sum(-1, keepdim=True)  # the update without dropout
assert bool((_delta[:, :1] < _full - 1e-3).any()), "in training mode, the adapter's input must go through dropout"
_ratio = float(_delta[:, 0].sum() / _full.sum())
assert 0.85 < _ratio < 1.15, "dropout must rescale the kept inputs by 1 / (1 - p) (use nn.Dropout)"
_layer.eval()
with torch.no_grad():
    expect_close(_layer(_x) - _layer.base(_x), _full.expand(200, 5), "the update in eval mode (no dropout)")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2. Injecting LoRA into a model (3 points)
#
# A transformer has hundreds of linear layers. LoRA adapts a chosen few, usually the attention
# projections; in a Llama model they are called `q_proj`, `k_proj`, `v_proj` and `o_proj`, and their full
# names look like `model.layers.0.self_attn.q_proj` (print `model` or `list(model.named_modules())` to
# see). Injecting LoRA means replacing each chosen layer, in its parent module, by a `LoRALinear` around it,
# and then freezing everything else: embeddings, norms, the other linears, the output head.
#
# **Write** `inject_lora(model, target_modules, r, alpha, dropout=0.0)`:
#
# - `target_modules` is a list or tuple of names like `["q_proj", "v_proj"]`. A layer is chosen when it is
#   an `nn.Linear` and the **last component** of its name is one of them (so `"proj"` chooses
#   `attn.proj` but not `attn.out_proj`: the rule peft uses too).
# - Replace each chosen layer, in place, by `LoRALinear(layer, r, alpha, dropout)`. To replace a child,
#   find its parent (`model.get_submodule(parent_name)`; `get_submodule("")` is the model itself) and
#   `setattr(parent, child_name, new_layer)`. Collect the chosen layers first, then replace them: changing
#   a model while iterating over `named_modules()` is asking for trouble.
# - Freeze every parameter of the model except the `lora_A` and `lora_B` weights. (Do not count on your
#   `LoRALinear` for this: it only freezes its own base layer.)
# - Return the full names of the replaced layers, in the order `model.named_modules()` lists them.
# - Raise a `ValueError` when nothing matches: a typo in a target name would otherwise train nothing at all.

# %% nbgrader={"grade": false, "grade_id": "inject_answer", "locked": false, "schema_version": 3, "solution": true}
def inject_lora(model, target_modules, r, alpha, dropout=0.0):
    """Wrap every nn.Linear whose name ends in one of target_modules in a LoRALinear (in place); freeze
    everything else. Returns the replaced layers' names, in model order."""
    ### BEGIN SOLUTION
    chosen = [(name, module) for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and name.split(".")[-1] in target_modules]
    if not chosen:
        raise ValueError(f"no nn.Linear of the model is named like {list(target_modules)}")
    for p in model.parameters():
        p.requires_grad_(False)  # freeze everything first: the new lora_A and lora_B stay trainable
    for name, module in chosen:
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, LoRALinear(module, r, alpha, dropout))
    return [name for name, _ in chosen]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "inject_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
with reference_parts("LoRALinear"):
    model = tiny_llama(seed=3)
    q_proj = model.model.layers[0].self_attn.q_proj
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    names = inject_lora(model, ["q_proj", "v_proj"], r=4, alpha=8)
    expected_names = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert names == expected_names, f"inject_lora returned {names}, expected {expected_names}"
    layer = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(layer, LoRALinear) and layer.base is q_proj, "q_proj must be a LoRALinear around the original layer"
    assert isinstance(model.model.layers[0].self_attn.k_proj, nn.Linear), "k_proj was not a target: leave it alone"
    expected_trainable = {f"{n}.lora_{m}.weight" for n in names for m in "AB"}
    assert trainable_names(model) == expected_trainable, (
        f"{len(trainable_names(model))} trainable tensors; only the {len(expected_trainable)} lora_A and lora_B "
        f"weights may be trainable (e.g. {sorted(trainable_names(model) ^ expected_trainable)[:2]} is wrong)")
    with torch.no_grad():
        expect_close(model(ids).logits, before, "logits right after injection (B = 0: nothing changes yet)")
### BEGIN HIDDEN TESTS
def _check_like_peft(targets, r, alpha, seed):
    """Same layers, same trainable shapes and, with the same adapter weights, the same logits as peft."""
    with reference_parts("LoRALinear"):  # the course's layer in place of Part 1
        ours = tiny_llama(seed)
        got = inject_lora(ours, list(targets), r=r, alpha=alpha)
        theirs = peft_lora(tiny_llama(seed), targets, r, alpha)
        want = [name.removeprefix("base_model.model.") for name, m in theirs.named_modules()
                if hasattr(m, "base_layer") and name.endswith(tuple(targets))]
        assert got == want, f"targets {targets}: inject_lora returned {got}, peft adapts {want}"
        for name in got:
            layer = ours.get_submodule(name)
            assert isinstance(layer, LoRALinear), f"{name} is not a LoRALinear"
            assert layer.r == r and layer.scaling == alpha / r, f"{name}: pass r and alpha to LoRALinear"
        shapes = sorted(tuple(p.shape) for p in ours.parameters() if p.requires_grad)
        assert shapes == sorted(tuple(p.shape) for p in theirs.parameters() if p.requires_grad), (
            f"targets {targets}: the trainable tensors differ from peft's")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name in got:
                ours.get_submodule(name).lora_B.weight.normal_(generator=gen)
        theirs = peft_lora(tiny_llama(seed), targets, r, alpha, adapter_from=ours)
        ids_ = torch.randint(0, 97, (2, 7), generator=gen)
        with torch.no_grad():
            expect_close(ours(ids_).logits, theirs(ids_).logits, f"targets {targets}: logits compared with peft",
                         atol=1e-4)


_check_like_peft(("q_proj", "v_proj"), 4, 8, 201)
_check_like_peft(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), 2, 16, 202)
_check_like_peft(("o_proj",), 1, 1, 203)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({"proj": nn.Linear(8, 8), "out_proj": nn.Linear(8, 8)})
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.mlp.add_module("proj", nn.Linear(8, 8))
        self.norm = nn.LayerNorm(8)


_model = nn.Module()
_model.blocks = nn.ModuleList([_Block(), _Block()])
_model.proj = nn.Linear(8, 3)
_model.head = nn.Linear(3, 3)
with reference_parts("LoRALinear"):  # the course's layer in place of Part 1
    _got = inject_lora(_model, ("proj",), r=2, alpha=4, dropout=0.1)
    _want = ["blocks.0.attn.proj", "blocks.0.mlp.proj", "blocks.1.attn.proj", "blocks.1.mlp.proj", "proj"]
    assert _got == _want, f"target 'proj' must choose exactly {_want} (the last component of the name), got {_got}"
    assert isinstance(_model.blocks[0].attn["out_proj"], nn.Linear), "'proj' must not choose attn.out_proj"
    assert isinstance(_model.proj.lora_dropout, nn.Dropout) and _model.proj.lora_dropout.p == 0.1, (
        "pass dropout to LoRALinear")
    assert trainable_names(_model) == {f"{n}.lora_{m}.weight" for n in _want for m in "AB"}, (
        "only the lora_A and lora_B weights may be trainable (norms, other linears and the head are frozen)")
    _raised = False
    try:
        inject_lora(tiny_llama(204), ["c_attn"], r=2, alpha=2)
    except ValueError:
        _raised = True
    assert _raised, "inject_lora must raise a ValueError when no layer matches target_modules"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3. Counting parameters (2 points)
#
# "LoRA trains 0.3% of the parameters" is a claim you should be able to check on any model. Parameters are
# `nn.Parameter` tensors; the ones that will be trained have `requires_grad = True`. Two traps:
#
# - **Tied weights.** Many language models (GPT-2, SmolLM2) use one matrix both as the token embedding and
#   as the output head. It appears twice in `model.state_dict()` (under two names) but is one tensor:
#   count it once. `model.parameters()` lists each parameter tensor once.
# - **Buffers** (`register_buffer`, e.g. rotary-embedding frequencies) are state but not parameters.
#
# **Write** `count_parameters(model)` returning `(trainable, total)`: two ints, the number of scalars in the
# trainable parameters and in all parameters.

# %% nbgrader={"grade": false, "grade_id": "count_answer", "locked": false, "schema_version": 3, "solution": true}
def count_parameters(model):
    """(trainable, total) numbers of parameters, each shared tensor counted once."""
    ### BEGIN SOLUTION
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "count_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
layer = nn.Linear(10, 5)
assert tuple(count_parameters(layer)) == (55, 55), f"nn.Linear(10, 5) has 10 * 5 + 5 = 55 parameters, got {count_parameters(layer)}"
layer.bias.requires_grad_(False)
assert tuple(count_parameters(layer)) == (50, 55), f"with the bias frozen: (50, 55), got {count_parameters(layer)}"

# A tiny Llama with tied embeddings: V = 97, C = 48, 2 layers, MLP width 80, key/value width 16.
model = tiny_llama(tie=True)
V, C, L, d_ff, kv = 97, 48, 2, 80, 16
per_layer = C * C + 2 * C * kv + C * C + 3 * C * d_ff + 2 * C  # q, k and v, o, the MLP, two RMSNorms
expected = V * C + L * per_layer + C  # embedding (= head), layers, final norm
assert tuple(count_parameters(model)) == (expected, expected), (
    f"the tiny Llama has {expected:,} parameters (its tied head counted once), got {count_parameters(model)}")
### BEGIN HIDDEN TESTS
def _count_like(model_, what):
    want = (sum(p.numel() for p in model_.parameters() if p.requires_grad), sum(p.numel() for p in model_.parameters()))
    got = count_parameters(model_)
    assert isinstance(got, (tuple, list)) and len(got) == 2, f"{what}: return a pair (trainable, total)"
    assert (int(got[0]), int(got[1])) == want, f"{what}: got {tuple(got)}"
    return want


# LoRA on a tiny Llama, with and without tied embeddings: the same as peft's own count.
for _tie in (False, True):
    _theirs = peft_lora(tiny_llama(301, tie=_tie), ["q_proj", "v_proj", "down_proj"], r=4, alpha=8)
    assert _count_like(_theirs, f"a tiny Llama (tie={_tie}) with peft's LoRA") == _theirs.get_nb_trainable_parameters()

# SmolLM2-135M's architecture (on the meta device): 134,515,008 parameters; LoRA r = 8 on q and v trains
# 460,800 of them (30 layers * 8 * ((576 + 576) + (576 + 192))).
_smol = smollm2_shaped_llama()
assert _count_like(_smol, "SmolLM2-135M") == (134_515_008, 134_515_008)
_smol.requires_grad_(False)
ref_lora.inject_lora(_smol, ref_lora.LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj")))
assert _count_like(_smol, "SmolLM2-135M with LoRA r=8 on q_proj and v_proj") == (460_800, 134_975_808)

_sequential = nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 7, bias=False))
_sequential[1].weight = _sequential[0].weight  # tied
_sequential.register_buffer("table", torch.zeros(100))
assert _count_like(_sequential, "an embedding tied to a head, plus a buffer") == (28, 28)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4. Merging and unmerging (3 points)
#
# At inference, an unmerged LoRA layer costs two extra small matrix products per call. Since
# $W x + \frac{\alpha}{r} B A x = (W + \frac{\alpha}{r} B A)\,x$, the update can be **merged** into the
# weight once, after training: the model then has exactly its original shape and speed. **Unmerging**
# subtracts it again, which gives back the base weights, so one base model can switch between adapters
# for different tasks.
#
# **Write** `merge_lora(model)` and `unmerge_lora(model)`:
#
# - `merge_lora(model)`: for every `LoRALinear` in `model` (`model.modules()`; use `isinstance(m, LoRALinear)`)
#   that is **not** merged yet, add $\frac{\alpha}{r} B A$ (shape `(O, I)`: mind the order of the product)
#   to `m.base.weight` in place, and set `m.merged = True`. A layer that is already merged is left alone:
#   adding the update twice would silently change the model. Return how many layers were merged.
# - `unmerge_lora(model)`: the reverse, for every merged layer. Return how many were unmerged.
# - Change the weights under `torch.no_grad()` (a weight update is not part of any computation to
#   differentiate), and keep them `nn.Parameter`s: update them in place.

# %% nbgrader={"grade": false, "grade_id": "merge_answer", "locked": false, "schema_version": 3, "solution": true}
@torch.no_grad()
def merge_lora(model):
    """W <- W + (alpha / r) B A in every unmerged LoRALinear of model; returns how many were merged."""
    ### BEGIN SOLUTION
    n = 0
    for m in model.modules():
        if isinstance(m, LoRALinear) and not m.merged:
            m.base.weight += m.scaling * (m.lora_B.weight @ m.lora_A.weight)  # (O, R) @ (R, I) = (O, I)
            m.merged = True
            n += 1
    return n
    ### END SOLUTION


@torch.no_grad()
def unmerge_lora(model):
    """W <- W - (alpha / r) B A in every merged LoRALinear of model; returns how many were unmerged."""
    ### BEGIN SOLUTION
    n = 0
    for m in model.modules():
        if isinstance(m, LoRALinear) and m.merged:
            m.base.weight -= m.scaling * (m.lora_B.weight @ m.lora_A.weight)
            m.merged = False
            n += 1
    return n
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "merge_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
model, names = lora_llama(seed=4)  # LoRA (the course's layer) on q_proj and v_proj, B random
with reference_parts(LoRALinear=ref_lora.LoRALinear):
    ids = torch.randint(0, 97, (2, 8))
    q_proj = model.get_submodule(names[0])
    w_before = q_proj.base.weight.detach().clone()
    with torch.no_grad():
        unmerged = model(ids).logits
    assert merge_lora(model) == 4, "the model has 4 LoRA layers to merge"
    assert q_proj.merged, "a merged layer must have merged = True"
    assert not torch.allclose(q_proj.base.weight, w_before), "merging must change base.weight"
    with torch.no_grad():
        expect_close(model(ids).logits, unmerged, "logits after merging (must equal the unmerged model's)")
    assert merge_lora(model) == 0, "merging again must merge nothing"
    with torch.no_grad():
        expect_close(model(ids).logits, unmerged, "logits after a second merge_lora")
    assert unmerge_lora(model) == 4 and not q_proj.merged, "unmerge_lora must unmerge the 4 layers"
    expect_close(q_proj.base.weight, w_before, "base.weight after merging and unmerging", atol=1e-6)
### BEGIN HIDDEN TESTS
def _check_merge(seed, targets, r, alpha, tie):
    model_, names_ = lora_llama(seed, targets, r, alpha, tie)
    with reference_parts(LoRALinear=ref_lora.LoRALinear):  # the class of the adapted layers
        layers_ = [model_.get_submodule(n) for n in names_]
        weights_ = [m.base.weight.detach().clone() for m in layers_]
        ids_ = torch.randint(0, 97, (3, 6))
        with torch.no_grad():
            unmerged_ = model_(ids_).logits
        label = f"LoRA r={r}, alpha={alpha} on {targets}"
        assert merge_lora(model_) == len(layers_), f"{label}: merge_lora must return the number of merged layers"
        for m, w in zip(layers_, weights_):
            assert isinstance(m.base.weight, nn.Parameter) and not m.base.weight.requires_grad, (
                f"{label}: base.weight must stay a frozen nn.Parameter (update it in place, under torch.no_grad())")
            expect_close(m.base.weight, w + m.scaling * m.lora_B.weight @ m.lora_A.weight,
                         f"{label}: merged weight (W + alpha / r * B A)", atol=1e-5)
        with torch.no_grad():
            expect_close(model_(ids_).logits, unmerged_, f"{label}: logits after merging", atol=1e-4)
        # The same merged weights as peft's merge_and_unload.
        theirs_ = peft_lora(tiny_llama(seed, tie), targets, r, alpha, adapter_from=model_).merge_and_unload()
        for n, m in zip(names_, layers_):
            expect_close(m.base.weight, theirs_.get_submodule(n).weight, f"{label}: merged {n} compared with peft's")
        # Unmerging one layer by hand, then the model: only the merged ones are touched.
        assert unmerge_lora(model_) == len(layers_), f"{label}: unmerge_lora must return the number of layers"
        assert unmerge_lora(model_) == 0, f"{label}: unmerging twice must unmerge nothing"
        for m, w in zip(layers_, weights_):
            assert not m.merged, f"{label}: an unmerged layer must have merged = False"
            expect_close(m.base.weight, w, f"{label}: base weight after unmerging", atol=1e-5)
        layers_[0].merge()  # the course's layer merges itself
        assert merge_lora(model_) == len(layers_) - 1, f"{label}: a layer that is already merged must be skipped"
        with torch.no_grad():
            expect_close(model_(ids_).logits, unmerged_, f"{label}: logits when some layers were merged earlier",
                         atol=1e-4)


torch.manual_seed(401)
_check_merge(402, ("q_proj", "v_proj"), 4, 8, False)
_check_merge(403, ("q_proj", "k_proj", "o_proj", "down_proj"), 3, 1, True)
_check_merge(404, ("gate_proj",), 1, 7, False)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 5. A soft prompt (5 points)
#
# Prompt tuning (Lester et al. 2021) keeps the *whole* model frozen and learns `P` **virtual tokens**:
# vectors in the model's embedding space, placed before the real tokens' embeddings. The model reads
# them like the embeddings of words, but they need not be the embedding of any word. A task costs
# `P * C` parameters: 8 virtual tokens for SmolLM2 (C = 576) are 4,608 numbers.
#
# A model that reads `P` extra positions also needs an **attention mask** that covers them. The mask
# `(B, T)` has a 1 for every real token and a 0 for padding; the virtual tokens are always visible, so the
# new mask is `P` ones followed by the old mask.
#
# **Write** the class `SoftPrompt(n_virtual, dim, init=None)`:
#
# - `self.weight`: an `nn.Parameter` of shape `(P, C) = (n_virtual, dim)`, float32, trainable. Start from
#   a **copy** of `init` (a `(P, C)` tensor, e.g. the embeddings of a text prompt) when it is given (the
#   prompt must not share memory with, say, the model's embedding matrix), else from random normal values
#   (`torch.randn`, as peft does).
# - `forward(inputs_embeds, attention_mask=None)`: `inputs_embeds` has shape `(B, T, C)`. Return a pair
#   `(embeds, mask)`: `embeds` `(B, P + T, C)` is the virtual tokens (the same for every sequence of the
#   batch, in the dtype of `inputs_embeds`) followed by `inputs_embeds`; `mask` is `None` when
#   `attention_mask` is `None`, else `(B, P + T)` with `P` ones first, in `attention_mask`'s dtype.

# %% nbgrader={"grade": false, "grade_id": "soft_prompt_answer", "locked": false, "schema_version": 3, "solution": true}
class SoftPrompt(nn.Module):
    """P trainable virtual-token embeddings (P, C), put before every sequence's input embeddings."""

    def __init__(self, n_virtual, dim, init=None):
        super().__init__()
        ### BEGIN SOLUTION
        if init is None:
            init = torch.randn(n_virtual, dim)
        self.weight = nn.Parameter(init.detach().to(torch.float32).clone())  # (P, C), a copy
        ### END SOLUTION

    def forward(self, inputs_embeds, attention_mask=None):
        ### BEGIN SOLUTION
        B, P = inputs_embeds.shape[0], self.weight.shape[0]
        prompt = self.weight.to(inputs_embeds.dtype).unsqueeze(0).expand(B, -1, -1)  # (B, P, C)
        embeds = torch.cat([prompt, inputs_embeds], dim=1)  # (B, P + T, C)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)  # (B, P + T)
        return embeds, attention_mask
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "soft_prompt_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
torch.manual_seed(5)
prompt = SoftPrompt(3, 4)
assert isinstance(prompt.weight, nn.Parameter) and prompt.weight.shape == (3, 4), "self.weight must be an (n_virtual, dim) nn.Parameter"
assert prompt.weight.requires_grad and bool((prompt.weight != 0).any()), "self.weight must be trainable and random"
x = torch.randn(2, 5, 4)
embeds, mask = prompt(x)
assert embeds.shape == (2, 8, 4), f"embeds has shape {tuple(embeds.shape)}, expected (B, P + T, C) = (2, 8, 4)"
expect_close(embeds[:, :3], prompt.weight.detach().expand(2, 3, 4), "the first P positions (the virtual tokens)")
expect_close(embeds[:, 3:], x, "the last T positions (the real tokens' embeddings)")
assert mask is None, "without an attention mask, return None as the mask"

init = torch.arange(12.0).view(3, 4)
prompt = SoftPrompt(3, 4, init=init)
expect_close(prompt.weight, init, "weight started from init")
with torch.no_grad():
    prompt.weight.add_(1.0)
assert init[0, 0] == 0.0, "self.weight must be a copy of init, not the same memory"
### BEGIN HIDDEN TESTS
def _prompt_logits(model_, prompt_, ids_, mask_=None):
    """Logits of the real positions when `model_` reads the soft prompt first."""
    embeds_, mask_ = prompt_(model_.get_input_embeddings()(ids_), mask_)
    P_ = embeds_.shape[1] - ids_.shape[1]
    return model_(inputs_embeds=embeds_, attention_mask=mask_).logits[:, P_:]


# The same logits as peft's prompt tuning, given the same virtual tokens.
for _P, _B, _T, _seed in [(5, 2, 7, 501), (1, 1, 1, 502), (8, 3, 4, 503)]:
    _theirs, _virtual = peft_prompt_tuning(tiny_llama(_seed), _P)
    _prompt = SoftPrompt(_P, 48, init=_virtual)
    _ids = torch.randint(0, 97, (_B, _T))
    with torch.no_grad():
        _want = _theirs(input_ids=_ids).logits[:, _P:]
        expect_close(_prompt_logits(tiny_llama(_seed), _prompt, _ids), _want,
                     f"logits with {_P} virtual tokens, compared with peft's prompt tuning", atol=1e-4)

# Gradients reach the prompt, and nothing else.
_model = tiny_llama(504).requires_grad_(False)
_prompt = SoftPrompt(4, 48)
assert _prompt.weight.dtype == torch.float32, "self.weight must be float32"
_ids = torch.randint(0, 97, (2, 5))
_logits = _prompt_logits(_model, _prompt, _ids)
F.cross_entropy(_logits.flatten(0, 1), _ids.flatten()).backward()
assert _prompt.weight.grad is not None and float(_prompt.weight.grad.abs().sum()) > 0, "no gradient reached the prompt"
assert float(_prompt.weight.grad[0].abs().sum()) > 0 and float(_prompt.weight.grad[-1].abs().sum()) > 0, \
    "every virtual token must receive a gradient"

# Half-precision inputs, a prompt initialised from part of an embedding matrix.
_emb = nn.Embedding(10, 6)
_prompt = SoftPrompt(2, 6, init=_emb.weight[:2])
with torch.no_grad():
    _prompt.weight.mul_(3.0)
expect_close(_emb.weight[:2] * 3.0, _prompt.weight, "a prompt started from the first rows of an embedding matrix")
_x = torch.randn(3, 4, 6).to(torch.bfloat16)
_embeds, _ = _prompt(_x)
assert _embeds.dtype == torch.bfloat16, f"embeds must have the dtype of inputs_embeds (bfloat16), got {_embeds.dtype}"
expect_close(_embeds[:, 2:], _x, "bfloat16 inputs after the prompt")
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "soft_prompt_mask_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
torch.manual_seed(6)
prompt = SoftPrompt(3, 4)
attention_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])  # the second sequence has two padding tokens
_, mask = prompt(torch.randn(2, 4, 4), attention_mask)
assert isinstance(mask, torch.Tensor) and mask.shape == (2, 7), "the mask must have shape (B, P + T) = (2, 7)"
assert mask.tolist() == [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 1, 1]], (
    "the mask must be P ones (the virtual tokens are always visible) followed by attention_mask")
assert mask.dtype == attention_mask.dtype, f"the mask must keep attention_mask's dtype ({attention_mask.dtype})"
### BEGIN HIDDEN TESTS
# Left padding through a real model, compared with peft.
for _P, _seed in [(5, 601), (2, 602)]:
    _theirs, _virtual = peft_prompt_tuning(tiny_llama(_seed), _P)
    _prompt = SoftPrompt(_P, 48, init=_virtual)
    _ids = torch.randint(0, 97, (3, 6))
    _mask = torch.ones(3, 6, dtype=torch.long)
    _mask[1, :2] = 0
    _mask[2, :5] = 0
    _model = tiny_llama(_seed)
    with torch.no_grad():
        _embeds, _mask2 = _prompt(_model.get_input_embeddings()(_ids), _mask)
        assert _mask2 is not None and _mask2.shape == (3, 6 + _P), "the mask must have shape (B, P + T)"
        _got = _model(inputs_embeds=_embeds, attention_mask=_mask2).logits[:, _P:]
        _want = _theirs(input_ids=_ids, attention_mask=_mask).logits[:, _P:]
        _real = _mask.bool()
        expect_close(_got[_real], _want[_real], f"logits of the real tokens with padding and {_P} virtual tokens, "
                     "compared with peft", atol=1e-4)
_, _bool_mask = SoftPrompt(2, 3)(torch.zeros(1, 2, 3), torch.tensor([[False, True]]))
assert _bool_mask.dtype == torch.bool and _bool_mask.tolist() == [[True, True, False, True]], "a boolean mask stays boolean"
_, _one = SoftPrompt(1, 3)(torch.zeros(4, 1, 3), torch.ones(4, 1, dtype=torch.long))
assert _one.tolist() == [[1, 1]] * 4, "P = 1, T = 1, batch of 4"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 6. Training rows with the loss on the answer only (4 points)
#
# Fine-tuning data are (prompt, completion) pairs. The model reads `prompt + completion + end-of-sequence`
# and we want it to learn to **write the completion**, not to predict the prompt: the prompt's tokens get
# the label **-100**, which `cross_entropy` (and every Hugging Face model) ignores. The end-of-sequence
# token *is* learned: it is how the model learns to stop.
#
# Hugging Face models take `labels` **aligned with `input_ids`** and shift them themselves: the logits at
# position `t` are scored against `labels[t + 1]`. So `labels` is a copy of `input_ids` with the prompt
# masked, never shifted by hand (shifting twice trains the model to predict two tokens ahead).
#
# A batch pads every row to the longest one. Padding goes on the **right**, with `pad_id` in `input_ids`,
# 0 in `attention_mask` (1 for real tokens), and -100 in `labels`: padding must not count in the loss.
#
# **Write**
#
# - `build_example(prompt_ids, completion_ids, eos_id)`: lists of token ids and an int; return a dict
#   `{"input_ids": [...], "labels": [...]}` of two equally long lists of ints. For prompt `[5, 6, 7]`,
#   completion `[8, 9]` and `eos_id = 2`: `input_ids = [5, 6, 7, 8, 9, 2]`,
#   `labels = [-100, -100, -100, 8, 9, 2]`. Do not change the lists you are given.
# - `collate(examples, pad_id)`: a list of such dicts; return a dict of three `(B, T_max)` `torch.long`
#   tensors, `"input_ids"`, `"attention_mask"` and `"labels"`, padded on the right as described.

# %% nbgrader={"grade": false, "grade_id": "example_answer", "locked": false, "schema_version": 3, "solution": true}
def build_example(prompt_ids, completion_ids, eos_id):
    """{"input_ids": prompt + completion + [eos], "labels": the same with -100 over the prompt}."""
    ### BEGIN SOLUTION
    input_ids = list(prompt_ids) + list(completion_ids) + [eos_id]
    labels = [-100] * len(prompt_ids) + list(completion_ids) + [eos_id]
    return {"input_ids": input_ids, "labels": labels}
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "example_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
prompt_ids, completion_ids = [5, 6, 7], [8, 9]
row = build_example(prompt_ids, completion_ids, eos_id=2)
assert list(row["input_ids"]) == [5, 6, 7, 8, 9, 2], f"input_ids: {row['input_ids']}, expected [5, 6, 7, 8, 9, 2]"
assert list(row["labels"]) == [-100, -100, -100, 8, 9, 2], f"labels: {row['labels']}, expected [-100, -100, -100, 8, 9, 2]"
assert prompt_ids == [5, 6, 7] and completion_ids == [8, 9], "build_example must not change its arguments"
### BEGIN HIDDEN TESTS
def _completion_loss(model_, prompt_, completion_, eos_):
    """Mean cross-entropy of the completion and EOS tokens, each predicted from everything before it."""
    ids_ = torch.tensor([prompt_ + completion_ + [eos_]])
    with torch.no_grad():
        logits_ = model_(ids_).logits[0]  # (T, V)
    targets_ = completion_ + [eos_]
    rows_ = torch.arange(len(prompt_) - 1, len(prompt_) - 1 + len(targets_))  # the positions that predict them
    return F.cross_entropy(logits_[rows_], torch.tensor(targets_))


_model = tiny_llama(701)
for _p, _c in [([11, 12, 13, 14], [20, 21, 22]), ([3], [40]), ([7, 8], []), ([1, 2, 3, 4, 5, 6, 7], [9, 10])]:
    _row = build_example(list(_p), list(_c), 96)
    assert len(_row["input_ids"]) == len(_row["labels"]), "input_ids and labels must be equally long"
    _ids = torch.tensor([list(_row["input_ids"])])
    _labels = torch.tensor([[int(v) for v in _row["labels"]]])
    assert _ids.tolist() == [_p + _c + [96]], f"prompt {_p}, completion {_c}: input_ids {_ids.tolist()[0]}"
    with torch.no_grad():
        _loss = _model(input_ids=_ids, labels=_labels).loss
    expect_close(_loss, _completion_loss(_model, _p, _c, 96),
                 f"prompt {_p}, completion {_c}: the model's loss with your labels (loss on the answer only)")
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "collate_answer", "locked": false, "schema_version": 3, "solution": true}
def collate(examples, pad_id):
    """Right-pad build_example rows into (B, T_max) long tensors input_ids, attention_mask, labels."""
    ### BEGIN SOLUTION
    T = max(len(e["input_ids"]) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)  # padding never counts in the loss
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.tensor(e["input_ids"])
        attention_mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e["labels"])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "collate_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
examples = [{"input_ids": [5, 6, 7, 8, 2], "labels": [-100, -100, 7, 8, 2]},
            {"input_ids": [9, 4, 2], "labels": [-100, 4, 2]}]
batch = collate(examples, pad_id=0)
assert set(batch) >= {"input_ids", "attention_mask", "labels"}, "return input_ids, attention_mask and labels"
for key in ("input_ids", "attention_mask", "labels"):
    assert isinstance(batch[key], torch.Tensor) and batch[key].dtype == torch.long, f"{key} must be a torch.long tensor"
assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 2], [9, 4, 2, 0, 0]], "input_ids: pad on the right with pad_id"
assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], "attention_mask: 1 for real tokens, 0 for padding"
assert batch["labels"].tolist() == [[-100, -100, 7, 8, 2], [-100, 4, 2, -100, -100]], "labels: pad with -100"
### BEGIN HIDDEN TESTS
# One padded batch through a model gives the same loss as the rows one by one, weighted by their tokens.
_model = tiny_llama(702)
_gen = torch.Generator().manual_seed(703)
_rows = []
for _n_prompt, _n_answer in [(4, 3), (2, 1), (6, 5), (3, 2)]:
    _ids = torch.randint(3, 97, (_n_prompt + _n_answer + 1,), generator=_gen).tolist()
    _rows.append({"input_ids": _ids, "labels": [-100] * _n_prompt + _ids[_n_prompt:]})
_batch = collate(_rows, pad_id=1)
assert tuple(_batch["input_ids"].shape) == (4, 12), f"4 rows of at most 12 tokens: shape {tuple(_batch['input_ids'].shape)}"
for _i, _r in enumerate(_rows):
    _n = len(_r["input_ids"])
    assert _batch["input_ids"][_i, :_n].tolist() == _r["input_ids"], f"row {_i}: the tokens must come first, unchanged"
    assert (_batch["input_ids"][_i, _n:] == 1).all() and (_batch["labels"][_i, _n:] == -100).all(), (
        f"row {_i}: padding must be pad_id in input_ids and -100 in labels")
    assert _batch["attention_mask"][_i].tolist() == [1] * _n + [0] * (12 - _n), f"row {_i}: attention_mask"
with torch.no_grad():
    _loss = _model(**{k: _batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss
    _sums, _counts = 0.0, 0
    for _r in _rows:
        _l = _model(input_ids=torch.tensor([_r["input_ids"]]), labels=torch.tensor([_r["labels"]])).loss
        _k = sum(1 for v in _r["labels"][1:] if v != -100)
        _sums, _counts = _sums + float(_l) * _k, _counts + _k
expect_close(_loss, torch.tensor(_sums / _counts), "loss of the padded batch (padding must not count)")
_single = collate([{"input_ids": [4, 5], "labels": [-100, 5]}], pad_id=0)
assert _single["input_ids"].tolist() == [[4, 5]] and _single["attention_mask"].tolist() == [[1, 1]], \
    "a batch of one row needs no padding"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 7. Data augmentation (4 points)
#
# With a few hundred examples, cheap variations of each one can help a classifier: EDA ("Easy Data
# Augmentation", Wei & Zou 2019) deletes, swaps, replaces and inserts random words. The label stays the
# same, so the model learns that those changes do not matter. Two of the four operations:
#
# **Write**
#
# - `random_deletion(text, p, rng)`: split `text` on whitespace into words and delete **each word
#   independently** with probability `p` (`rng.random() < p` deletes it); join the survivors with single
#   spaces, in their original order. At least one word always survives: when every word was deleted,
#   return one word of the text chosen at random. A text of one word (or none) comes back unchanged.
# - `random_swap(text, n, rng)`: `n` times, choose two **different** positions uniformly at random (any two
#   of the text's words, e.g. `rng.sample(range(len(words)), 2)`) and swap their words; return them joined
#   with single spaces. A text of fewer than two words comes back unchanged.
#
# `rng` is a `random.Random`: use it for **every** random choice, never the global `random` module, so that
# the same seed always gives the same augmented data set.

# %% nbgrader={"grade": false, "grade_id": "deletion_answer", "locked": false, "schema_version": 3, "solution": true}
def random_deletion(text, p, rng):
    """Delete each word with probability p (at least one word survives)."""
    ### BEGIN SOLUTION
    words = text.split()
    if len(words) <= 1:
        return text
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept) if kept else rng.choice(words)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "deletion_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
text = "the quick brown fox jumps over the lazy dog"
assert random_deletion(text, 0.0, random.Random(0)) == text, "with p = 0 nothing is deleted"
assert random_deletion(text, 1.0, random.Random(0)) in text.split(), "with p = 1 exactly one word survives"
out = random_deletion(text, 0.5, random.Random(1))
in_order = iter(text.split())  # `w in in_order` consumes the iterator up to w: a subsequence check
assert all(w in in_order for w in out.split()), f"{out!r} is not the text with some words deleted (in their order)"
assert random_deletion(text, 0.5, random.Random(7)) == random_deletion(text, 0.5, random.Random(7)), \
    "the same seed must give the same result"
### BEGIN HIDDEN TESTS
_words = [f"w{i}" for i in range(100)]
_text = " ".join(_words)
_deleted = [0] * 100
_total = 0
for _seed in range(40):
    _out = random_deletion(_text, 0.3, random.Random(_seed)).split()
    _it = iter(_words)
    assert all(w in _it for w in _out), "the survivors must keep their order"
    _total += 100 - len(_out)
    for _i, _w in enumerate(_words):
        _deleted[_i] += _w not in _out
assert 0.25 < _total / 4000 < 0.35, f"with p = 0.3 about 30% of the words must go, not {_total / 4000:.0%}"
assert min(_deleted[0], _deleted[-1]) >= 3, "the first and last words must be deletable like any other"
_survivors = {random_deletion("a b c d e", 1.0, random.Random(s)) for s in range(60)}
assert _survivors == {"a", "b", "c", "d", "e"}, "when every word is deleted, return a random word of the text"
assert random_deletion("hello", 0.9, random.Random(0)) == "hello" and random_deletion("", 0.5, random.Random(0)) == ""
_r1, _r2 = random.Random(11), random.Random(11)
random.seed(1)
_a = [random_deletion(_text, 0.5, _r1) for _ in range(3)]
random.seed(2)
_b = [random_deletion(_text, 0.5, _r2) for _ in range(3)]
assert _a == _b, "use only rng for random choices (the global random module changes between runs)"
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "swap_answer", "locked": false, "schema_version": 3, "solution": true}
def random_swap(text, n, rng):
    """Swap two different random words, n times."""
    ### BEGIN SOLUTION
    words = text.split()
    if len(words) < 2:
        return text
    for _ in range(n):
        i, j = rng.sample(range(len(words)), 2)  # two different positions
        words[i], words[j] = words[j], words[i]
    return " ".join(words)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "swap_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
text = "the quick brown fox jumps over the lazy dog"
assert random_swap(text, 0, random.Random(0)) == text, "with n = 0 nothing moves"
out = random_swap(text, 3, random.Random(0))
assert sorted(out.split()) == sorted(text.split()), "swapping must keep the same words"
one = random_swap("a b c d e", 1, random.Random(3)).split()
assert sum(x != y for x, y in zip(one, "a b c d e".split())) == 2, "one swap moves exactly two different words"
assert random_swap(text, 2, random.Random(5)) == random_swap(text, 2, random.Random(5)), "the same seed must give the same result"
### BEGIN HIDDEN TESTS
_base_words = "a b c d e".split()
_pairs = {}
for _seed in range(1000):
    _out = random_swap("a b c d e", 1, random.Random(_seed)).split()
    _moved = tuple(i for i in range(5) if _out[i] != _base_words[i])
    assert len(_moved) == 2, "each swap must exchange two different positions"
    _pairs[_moved] = _pairs.get(_moved, 0) + 1
assert len(_pairs) == 10 and min(_pairs.values()) >= 40, (
    "every pair of positions (not only neighbours, the last word too) must be equally likely to be swapped")
_words = [f"w{i}" for i in range(30)]
for _n in (1, 4, 9):
    _out = random_swap(" ".join(_words), _n, random.Random(_n)).split()
    assert sorted(_out) == sorted(_words), "swapping must keep the same words"
    assert 0 < sum(x != y for x, y in zip(_out, _words)) <= 2 * _n, f"n = {_n} swaps move at most {2 * _n} words"
assert random_swap("alone", 3, random.Random(0)) == "alone" and random_swap("", 2, random.Random(0)) == ""
assert random_swap("x y", 1, random.Random(0)) == "y x"
_r1, _r2 = random.Random(12), random.Random(12)
random.seed(1)
_a = [random_swap(" ".join(_words), 2, _r1) for _ in range(3)]
random.seed(2)
_b = [random_swap(" ".join(_words), 2, _r2) for _ in range(3)]
assert _a == _b, "use only rng for random choices (the global random module changes between runs)"
### END HIDDEN TESTS

# %% [markdown]
# ## Putting it together (not graded)
#
# **Can a low-rank update learn a low-rank change?** Below, a "fine-tuned" layer differs from its base by a
# hidden update $\Delta W$ of rank 4. Your `LoRALinear` sees only inputs and the fine-tuned layer's outputs,
# and trains $A$ and $B$ to match them, at ranks 1 to 8. By the Eckart-Young theorem the best rank-$r$
# approximation of $\Delta W$ keeps its $r$ largest singular values, so a rank-$r$ adapter cannot do
# better than that; at $r \geq 4$ it can be exact.

# %%
import matplotlib.pyplot as plt

seed_everything(0)
threads = torch.get_num_threads()
torch.set_num_threads(1)  # matrices this small train faster on one thread than on several
I, O, true_rank = 64, 48, 4
base = nn.Linear(I, O).requires_grad_(False)
delta = 0.5 * torch.randn(O, true_rank) @ torch.randn(true_rank, I) / math.sqrt(I)  # the hidden update (O, I)
singular = torch.linalg.svdvals(delta)

ranks, learned_err, best_err = [1, 2, 3, 4, 8], [], []
for r in ranks:
    seed_everything(1)
    layer = LoRALinear(nn.Linear(I, O), r=r, alpha=2 * r)
    layer.base.load_state_dict(base.state_dict())
    optimizer = torch.optim.Adam([layer.lora_A.weight, layer.lora_B.weight], lr=1e-2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(300):
        x = torch.randn(64, I, generator=gen)
        loss = (layer(x) - (base(x) + x @ delta.T)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learned = layer.scaling * layer.lora_B.weight.detach() @ layer.lora_A.weight.detach()  # (O, I)
    learned_err.append(float(torch.linalg.matrix_norm(learned - delta) / torch.linalg.matrix_norm(delta)))
    best_err.append(float(singular[r:].square().sum().sqrt() / singular.square().sum().sqrt()))
    print(f"r = {r}: relative error of the learned update {learned_err[-1]:.4f} "
          f"(best possible at this rank: {best_err[-1]:.4f}); trainable numbers {r * (I + O)} of {I * O}")
torch.set_num_threads(threads)

fig, ax = plt.subplots(figsize=(5, 3.4))
ax.plot(ranks, learned_err, "o-", label="your LoRALinear, trained")
ax.plot(ranks, best_err, "k--", label="best rank-r approximation (SVD)")
ax.axvline(true_rank, color="grey", lw=0.8)
ax.set(xlabel="LoRA rank r", ylabel="relative error of the update", title="Learning a rank-4 update")
ax.legend()
plt.show()

# %% [markdown]
# **Merging the trained adapter** changes nothing in the outputs and removes the extra work:

# %%
x = torch.randn(5, I)
with torch.no_grad():
    adapted = layer(x)
    merge_lora(nn.Sequential(layer))
    print(f"largest change of the output after merging: {(layer(x) - adapted).abs().max().item():.1e}; "
          f"merged = {layer.merged}")
    unmerge_lora(nn.Sequential(layer))

# %% [markdown]
# **What LoRA saves on a real model.** SmolLM2-135M's architecture, built on PyTorch's `meta` device (real
# shapes, no memory, no download), adapted by your `inject_lora` and counted by your `count_parameters`:

# %%
for targets, r in [(["q_proj", "v_proj"], 8), (["q_proj", "k_proj", "v_proj", "o_proj"], 8),
                   (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 16)]:
    smol = smollm2_shaped_llama()
    inject_lora(smol, targets, r=r, alpha=2 * r)
    trainable, total = count_parameters(smol)
    print(f"LoRA r={r:>2} on {', '.join(targets):<62}: {trainable:>10,} trainable of {total:,} "
          f"({trainable / total:.2%}; a float32 adapter file of {4 * trainable / 2**20:.1f} MiB)")

# %% [markdown]
# **Training rows and augmented data.** Your `build_example` on characters (one token per character), shown
# as the text the loss sees (`.` = ignored), and a few variations of one sentence by your augmentation:

# %%
prompt_text, answer_text = "four hundred seventy three = ", "473"
row = build_example([ord(c) for c in prompt_text], [ord(c) for c in answer_text], eos_id=ord("\n"))
print("input :", "".join(chr(i) for i in row["input_ids"]).replace("\n", "⏎"))
print("labels:", "".join("." if t == -100 else chr(t) for t in row["labels"]).replace("\n", "⏎"))
rng = random.Random(0)
sentence = "return the number of bytes written to the file"
for _ in range(3):
    print("deletion:", random_deletion(sentence, 0.3, rng), "  |  swap:", random_swap(sentence, 1, rng))

# %% [markdown]
# ## Reflection
#
# Not graded, but worth five minutes each:
#
# 1. Why must *B* (and not *A*) start at zero? What would happen to the first gradient step if both were
#    random? If both were zero?
# 2. In the rank experiment, the errors at ranks 1 to 3 sit on the SVD curve. What does that say about
#    what gradient descent finds? Would a fine-tuning update of a real model be as low-rank as this one?
# 3. With LoRA on `q_proj` and `v_proj` at r = 8, SmolLM2 trains about 0.34% of its weights. Where does
#    the memory of fine-tuning go then: weights, gradients, optimizer state or activations? (Demo 5.)
# 4. A merged model cannot switch adapters for free. When would you serve LoRA models unmerged?
# 5. Prompt tuning adds `P` positions to every sequence. What does that cost at inference, compared with
#    a merged LoRA adapter?
# 6. Random deletion can delete the one word that decides the label ("not"). What kind of task is EDA
#    safe for, and which not?

# %% [markdown]
# *Your notes:*
