"""Fine-tuning recipes: prompt/completion batches with loss masking, greedy decoding and exact-match
evaluation, full fine-tuning vs feature extraction (a new head on a frozen body), storage cost, and an
exact account of training memory (weights, gradients, optimizer state, activations).

Works with this package's :class:`~llmcourse.transformer.GPT` (character tokenizer) and with Hugging Face
causal LMs (their tokenizer), and with the adapter wrappers of :mod:`llmcourse.lora` and
:mod:`llmcourse.prompt_tuning`. Training itself reuses :func:`llmcourse.train.train`.

References: Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text Classification" (ULMFiT,
full fine-tuning of a pretrained LM); Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural
networks"; Rajbhandari et al. 2020, "ZeRO" (the 2 + 2 + 12 bytes per parameter of mixed-precision Adam).

Taught in ``modules/02_fine_tuning/01_fine_tuning.py`` (full fine-tuning, feature extraction, forgetting,
storage) and ``05_peft_costs.py`` (memory and time). Shape legend: B batch, T length, C width, V vocab.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .data_prep import Example, Template
from .prompt_tuning import LMOutput, lm_loss
from .train import TrainConfig, TrainHistory, train
from .transformer import GPT

__all__ = [
    "encode",
    "decode",
    "CompletionData",
    "build_completion_data",
    "completion_batch_fn",
    "completion_loss",
    "greedy_generate",
    "EvalResult",
    "answer_correct",
    "exact_match",
    "finetune",
    "NewHeadLM",
    "set_trainable",
    "parameter_bytes",
    "MemoryBreakdown",
    "training_memory",
]


# ----------------------------------------------------------------------------------------------------
# Tokenizers: our CharTokenizer or a Hugging Face tokenizer
# ----------------------------------------------------------------------------------------------------
def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (character or Hugging Face tokenizer)."""
    if hasattr(tokenizer, "stoi"):  # llmcourse.data.CharTokenizer
        return tokenizer.encode(text)
    return tokenizer.encode(text, add_special_tokens=False)


def decode(tokenizer, ids: Sequence[int]) -> str:
    if hasattr(tokenizer, "stoi"):
        return tokenizer.decode(list(ids))
    return tokenizer.decode(list(ids), skip_special_tokens=False)


# ----------------------------------------------------------------------------------------------------
# Prompt/completion batches
# ----------------------------------------------------------------------------------------------------
@dataclass
class CompletionData:
    """Padded training rows. ``input_ids`` (N, T) = prompt + completion tokens minus the last, then padding;
    ``targets`` (N, T) the next tokens, -100 where no loss is taken (the prompt, when masked, and the padding).
    """

    input_ids: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index) -> CompletionData:
        return CompletionData(self.input_ids[index], self.targets[index])


def build_completion_data(examples: Sequence[Example], template: Template, tokenizer, mask_prompt: bool = True,
                          pad_id: int = 0, max_len: int | None = None) -> CompletionData:
    """Tokenize ``template.prompt_text(prompt)`` and ``template.completion_text(completion)`` separately (so
    the boundary is exact), concatenate, and shift: the model learns to predict every completion token
    (and the eos) from what precedes it. ``mask_prompt=False`` also trains on predicting the prompt's own
    tokens. Rows longer than ``max_len`` raise ``ValueError``."""
    if not examples:
        raise ValueError("no examples")
    rows = []
    for ex in examples:
        p = encode(tokenizer, template.prompt_text(ex.prompt))
        c = encode(tokenizer, template.completion_text(ex.completion))
        if not c:
            raise ValueError(f"empty completion for prompt {ex.prompt!r}")
        ids = p + c
        targets = list(ids[1:])
        if mask_prompt:
            targets[: max(len(p) - 1, 0)] = [-100] * max(len(p) - 1, 0)  # first target kept: predicts c[0]
        rows.append((ids[:-1], targets))
    T = max(len(r[0]) for r in rows)
    if max_len is not None and T > max_len:
        raise ValueError(f"the longest example needs {T} positions, more than max_len={max_len}")
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (ids, targets) in enumerate(rows):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, : len(targets)] = torch.tensor(targets)
    return CompletionData(x, y)


def completion_batch_fn(train_data: CompletionData, val_data: CompletionData | None, batch_size: int):
    """A ``batch_fn(split, generator)`` for :func:`llmcourse.train.train`: random rows (with replacement)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def batch_fn(split: str, generator: torch.Generator):
        data = val_data if split == "val" and val_data is not None else train_data
        idx = torch.randint(len(data), (batch_size,), generator=generator)
        return data.input_ids[idx], data.targets[idx]

    return batch_fn


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids)
    return out.logits if hasattr(out, "logits") else out[0]


def completion_loss(model: nn.Module, batch) -> torch.Tensor:
    """Cross-entropy of a (input_ids, targets) batch for any of the course's causal LMs (our GPT, a
    Hugging Face model, or a prompt/prefix-tuning wrapper); -100 targets are ignored."""
    input_ids, targets = batch
    return lm_loss(_logits(model, input_ids), targets)


# ----------------------------------------------------------------------------------------------------
# Decoding and evaluation
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_generate(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    stop_id: int | None = None, batch_size: int = 256) -> list[list[int]]:
    """Greedy continuation (argmax at each step) of each prompt (a list of token ids); returns the new ids,
    cut after ``stop_id`` when it appears. Prompts of equal length are decoded together (no padding, so no
    attention mask is needed); no KV cache, which is fine for the short answers of the course's tasks."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        groups[len(p)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    try:
        for _, members in sorted(groups.items()):
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                ids = torch.tensor([list(prompts[i]) for i in chunk], device=device)  # (B, T)
                done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
                for _ in range(max_new_tokens):
                    next_id = _logits(model, ids)[:, -1].argmax(dim=-1)  # (B,)
                    ids = torch.cat([ids, next_id[:, None]], dim=1)
                    if stop_id is not None:
                        done |= next_id == stop_id
                        if bool(done.all()):
                            break
                T = len(prompts[chunk[0]])
                for row, i in enumerate(chunk):
                    new = ids[row, T:].tolist()
                    if stop_id is not None and stop_id in new:
                        new = new[: new.index(stop_id) + 1]
                    out[i] = new
    finally:
        model.train(was_training)
    return out


class EvalResult(NamedTuple):
    """``accuracy``: fraction of exact answers; ``predictions``: the parsed answers, in order."""

    accuracy: float
    predictions: list[str]


@torch.no_grad()
def answer_correct(model: nn.Module, data: CompletionData, batch_size: int = 256) -> torch.Tensor:
    """Exact match in one forward pass per batch: row i is correct (True in the (N,) result) when the model's
    argmax equals the target at *every* target position (the completion and its eos; build ``data`` with
    ``mask_prompt=True``).

    This is the same verdict as greedy decoding followed by an exact comparison: greedy decoding writes the
    right answer if and only if, at each step, the argmax given the right prefix is the right next token
    (by induction over the steps), and it stops right there if the eos is predicted too. So no token-by-token
    generation is needed to score a model, which makes evaluation cheap."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(data), batch_size):
            x = data.input_ids[start : start + batch_size].to(device)
            y = data.targets[start : start + batch_size].to(device)
            pred = _logits(model, x).argmax(dim=-1)  # (B, T)
            out.append(((pred == y) | (y == -100)).all(dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def exact_match(model: nn.Module, tokenizer, examples: Sequence[Example], template: Template,
                max_new_tokens: int = 8, eval_template: Template | None = None) -> EvalResult:
    """Greedy-decode an answer to every prompt (formatted with ``eval_template``, by default ``template``)
    and score exact string equality with the expected completion. The answer is the generated text up to
    the template's ``eos``; with no eos (or one never produced) it is everything generated."""
    eval_template = eval_template or template
    prompts = [encode(tokenizer, eval_template.prompt_text(ex.prompt)) for ex in examples]
    eos_ids = encode(tokenizer, template.eos) if template.eos else []
    stop_id = eos_ids[0] if len(eos_ids) == 1 else None
    generated = greedy_generate(model, prompts, max_new_tokens, stop_id=stop_id)
    predictions = [template.parse(decode(tokenizer, ids)) for ids in generated]
    correct = sum(p == ex.completion for p, ex in zip(predictions, examples))
    return EvalResult(correct / len(examples), predictions)


# ----------------------------------------------------------------------------------------------------
# Training recipes
# ----------------------------------------------------------------------------------------------------
def set_trainable(model: nn.Module, trainable: bool) -> None:
    """Make every parameter of ``model`` trainable (full fine-tuning) or frozen."""
    for p in model.parameters():
        p.requires_grad_(trainable)


def finetune(model: nn.Module, train_data: CompletionData, config: TrainConfig, val_data: CompletionData | None = None,
             device: torch.device | str | None = None, progress: bool = False) -> TrainHistory:
    """Train the trainable parameters of ``model`` on prompt/completion rows with
    :func:`llmcourse.train.train` (AdamW, warm-up + cosine, clipping). What is trainable decides the method:
    everything (full fine-tuning), a head, LoRA adapters, a soft prompt..."""
    batch_fn = completion_batch_fn(train_data, val_data, config.batch_size)
    return train(model, config, batch_fn, completion_loss, device=device, progress_bar=progress,
                 has_val=val_data is not None)


class NewHeadLM(nn.Module):
    """Feature extraction: our GPT's body frozen, a new trainable output head on top of its final features.

    The head is a fresh, untied copy of the pretrained output layer (V, C) (the classic recipe starts it at
    random; starting from the pretrained head keeps the base model's predictions at step 0). The body's
    features cannot change, so what the head can learn is limited to what they already encode; the base
    model is untouched (no forgetting), and one body can serve several heads.
    """

    def __init__(self, model: GPT):
        super().__init__()
        if not isinstance(model, GPT):
            raise ValueError(f"NewHeadLM wraps llmcourse.transformer.GPT, got {type(model).__name__}")
        set_trainable(model, False)
        self.body = model
        self.head = nn.Linear(model.config.d_model, model.config.vocab_size, bias=False,
                              device=model.lm_head.weight.device)
        with torch.no_grad():
            self.head.weight.copy_(model.lm_head.weight)

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-layer features (B, T, C) of the frozen body."""
        x = self.body.embed(input_ids)
        for block in self.body.h:
            x = block(x)
        return self.body.ln_f(x)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None) -> LMOutput:
        logits = self.head(self.features(input_ids))  # (B, T, V)
        return LMOutput(logits, lm_loss(logits, targets))


def parameter_bytes(model: nn.Module, trainable_only: bool = False, dtype: torch.dtype | None = None) -> int:
    """Bytes to store the (trainable) parameters, in their own dtype or as ``dtype`` (tied tensors once)."""
    total = 0
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        size = torch.empty((), dtype=dtype or p.dtype).element_size()
        total += p.numel() * size
    return total


# ----------------------------------------------------------------------------------------------------
# Memory accounting
# ----------------------------------------------------------------------------------------------------
class MemoryBreakdown(NamedTuple):
    """Bytes held during one training step: ``weights`` (all parameters), ``gradients`` (of the trainable
    ones), ``optimizer`` (its state after the step, e.g. AdamW's two moments), ``activations`` (tensors that
    autograd saved for the backward pass, parameters excluded, each storage counted once)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def _storage_key(t: torch.Tensor) -> tuple:
    s = t.untyped_storage()
    return (t.device.type, s.data_ptr(), s.nbytes())


def training_memory(model: nn.Module, batch, loss_fn: Callable[[nn.Module, object], torch.Tensor] = completion_loss,
                    optimizer_factory: Callable | None = None) -> MemoryBreakdown:
    """Run one training step (forward, backward, optimizer step) and count, exactly and deterministically,
    what it must hold in memory. Works on any device (no allocator statistics needed): activations are
    the tensors autograd packs for backward, seen through ``torch.autograd.graph.saved_tensors_hooks``.
    ``optimizer_factory(params)`` defaults to AdamW (lr 1e-4). The model's weights are updated."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = (optimizer_factory or (lambda ps: torch.optim.AdamW(ps, lr=1e-4)))(params)
    param_keys = {_storage_key(p) for p in model.parameters()}
    saved: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        key = _storage_key(t)
        if key not in param_keys:
            saved[key] = t.untyped_storage().nbytes()
        return t

    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model, batch)
    loss.backward()
    optimizer.step()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.ndim > 0)
    optimizer.zero_grad(set_to_none=True)
    return MemoryBreakdown(weights, grads, state, sum(saved.values()))
