"""Benchmark: our LoRA training step (``llmcourse.lora``) against peft's on the same model and inputs.

Both adapt SmolLM2-135M-Instruct's ``q_proj`` and ``v_proj`` (r=8, alpha=16, no dropout) with identical
adapter weights, take the same batch (8 x 64 tokens of standard-library documentation) and run the same
step: forward, next-token cross-entropy, backward, AdamW. The two are interleaved (ours, peft, ours, ...)
so that a busy machine slows both alike; medians are compared. Goal (issue 3): ours within 5% of peft.
The losses of the first step are checked equal, so the two really compute the same thing.

    python benchmarks/bench_lora.py [--repeat 5] [--batch 8] [--tokens 64] [--tiny]

``--tiny`` uses module 1's tiny GPT (its attention also names them ``q_proj``/``v_proj``) for a quick run.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from llmcourse import lora
from llmcourse.data import load_corpus
from llmcourse.utils import get_device, quiet, seed_everything, synchronize

GOAL = 1.05  # ours / peft, median step time


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out[0]


def make_step(model, ids: torch.Tensor, targets: torch.Tensor):
    """A closure running one AdamW training step of ``model``'s trainable parameters; returns the loss."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        logits = _logits(model, ids)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def load(tiny: bool, device: torch.device):
    """(model, token ids of the corpus, name)."""
    if tiny:
        from llmcourse.train import tiny_gpt

        model, tok = tiny_gpt()
        return model.to(device), tok.encode(load_corpus()[:50_000]), "tiny GPT (module 1)"
    from llmcourse.models import smollm2

    model, tok = smollm2(device=device)
    return model, tok.encode(load_corpus()[:50_000]), "SmolLM2-135M-Instruct"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    quiet()
    seed_everything(0)
    device = get_device()
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    base, corpus, name = load(args.tiny, device)
    B, T = args.batch, args.tokens
    ids = torch.tensor(corpus[: B * (T + 1)], device=device).view(B, T + 1)
    inputs, targets = ids[:, :-1], ids[:, 1:]  # (B, T) each

    ours = copy.deepcopy(base).train()
    config = lora.LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj"))
    names = lora.inject_lora(ours, config)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                            target_modules=["q_proj", "v_proj"])).train()
    del base
    # identical adapters: B non-zero so that the adapters matter, then copied into peft
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, lora.LoRALinear):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.01)
        set_peft_model_state_dict(theirs, lora.to_peft_state_dict(lora.lora_state_dict(ours)))
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_peft = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    if n_ours != n_peft:
        raise RuntimeError(f"trainable parameters differ: ours {n_ours}, peft {n_peft}")

    step_ours, step_peft = make_step(ours, inputs, targets), make_step(theirs, inputs, targets)
    loss_ours, loss_peft = step_ours(), step_peft()  # warm-up, and the same computation
    if abs(loss_ours - loss_peft) > 1e-4 * max(1.0, abs(loss_peft)):
        raise RuntimeError(f"first-step losses differ: ours {loss_ours:.6f}, peft {loss_peft:.6f}")

    times: dict[str, list[float]] = {"ours": [], "peft": []}
    for _ in range(args.repeat):
        for key, step in (("ours", step_ours), ("peft", step_peft)):
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["peft"]
    print(f"LoRA training step (r=8, alpha=16, q_proj + v_proj: {len(names)} layers, {n_ours:,} trainable), "
          f"{name}, batch {B} x {T} tokens, {device}, {torch.get_num_threads()} threads, AdamW, "
          f"median of {args.repeat} interleaved steps")
    print(f"  first-step loss: ours {loss_ours:.4f}, peft {loss_peft:.4f}")
    print(f"  {'':<10} {'median':>10} {'min':>10} {'max':>10}")
    for key in ("ours", "peft"):
        print(f"  {key:<10} {med[key] * 1e3:7.1f} ms {min(times[key]) * 1e3:7.1f} ms {max(times[key]) * 1e3:7.1f} ms")
    print(f"  ours / peft: {ratio:.3f}x (goal <= {GOAL}x: {'ok' if ratio <= GOAL else 'OVER GOAL'})")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
