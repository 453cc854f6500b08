"""Data-parallel training with ``torch.distributed`` on CPU: DDP, FSDP2, and exact checkpoint/resume.

Run it with two processes over the gloo backend (no GPU needed)::

    python -m torch.distributed.run --nproc_per_node 2 -m llmcourse.distributed --phase train --out run.json --ckpt ckpt
    python -m torch.distributed.run --nproc_per_node 2 -m llmcourse.distributed --phase resume --out resumed.json --ckpt ckpt

- **DDP** (``DistributedDataParallel``): every rank holds the whole model, computes gradients on its own
  slice of the global batch, and an all-reduce averages them before each step, so all replicas stay
  identical and training equals single-process training on the global batch.
- **FSDP2** (``torch.distributed.fsdp.fully_shard``, ZeRO-3): every rank keeps only a 1/world_size
  shard of each parameter, gradient and optimizer state; a block's full weights are all-gathered just
  before it runs and freed after, and gradients are reduce-scattered. Same losses, ~1/world_size the
  per-rank memory for parameters, gradients and Adam states.
- **Checkpoint and resume**: saving model, optimizer, the step and each rank's random-number-generator
  state (dropout draws from it), and drawing batches as a pure function of (seed, step), makes a
  resumed run reproduce the uninterrupted loss curve bit for bit.

The ``train`` phase runs DDP and FSDP on the same model and data, records losses and per-rank memory,
then trains a reference run with dropout for ``steps`` steps and an "interrupted" copy that checkpoints
at ``resume_at`` and stops. The ``resume`` phase starts fresh processes with a differently initialised
model, loads the checkpoint and finishes the run. Rank 0 writes the results as JSON.

Taught in ``modules/03_deployment/09_gpu_memory_scale_out.py``.

References:
- Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", arXiv:2006.15704
- Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models",
  arXiv:1910.02054
- Zhao et al. 2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel", arXiv:2304.11277
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .data import Batch, CharTokenizer, load_corpus
from .transformer import GPT, GPTConfig

__all__ = ["DistConfig", "rank_and_world", "load_tokens", "make_model", "rank_batch", "local_bytes",
           "train_steps", "reference_losses", "save_checkpoint", "load_checkpoint", "launch", "main"]


@dataclass
class DistConfig:
    """A tiny character-level GPT and its training run, sized for two CPU processes."""

    steps: int = 16  # optimizer steps of every run
    resume_at: int = 8  # the interrupted run checkpoints after this many steps
    batch_size: int = 8  # global batch (split evenly across ranks)
    block_size: int = 32  # context length
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    dropout: float = 0.1  # dropout of the checkpoint/resume runs (DDP/FSDP comparisons use 0)
    lr: float = 3e-3
    seed: int = 0
    data_chars: int = 200_000  # characters of the course corpus to train on

    def __post_init__(self) -> None:
        if not 0 < self.resume_at < self.steps:
            raise ValueError(f"need 0 < resume_at ({self.resume_at}) < steps ({self.steps})")
        if self.batch_size < 1 or self.block_size < 1:
            raise ValueError(f"batch_size ({self.batch_size}) and block_size ({self.block_size}) must be positive")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size), or (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def load_tokens(config: DistConfig) -> tuple[torch.Tensor, int]:
    """The first ``data_chars`` characters of the course corpus as ids, and the vocabulary size."""
    text = load_corpus()[: config.data_chars]
    tokenizer = CharTokenizer.fit(text)
    return torch.tensor(tokenizer.encode(text), dtype=torch.long), tokenizer.vocab_size


def make_model(config: DistConfig, vocab_size: int, dropout: float, init_seed: int | None = None) -> GPT:
    """The same GPT on every rank: initialised from ``init_seed`` (default ``config.seed``)."""
    torch.manual_seed(config.seed if init_seed is None else init_seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=config.block_size, n_layer=config.n_layer,
                         n_head=config.n_head, d_model=config.d_model, dropout=dropout))


def rank_batch(tokens: torch.Tensor, config: DistConfig, step: int, rank: int, world: int) -> Batch:
    """This rank's slice of step ``step``'s global batch. The global batch is a pure function of
    (seed, step), so every rank agrees on it and a resumed run draws exactly the same data."""
    if config.batch_size % world:
        raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the world size ({world})")
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    starts = torch.randint(len(tokens) - config.block_size, (config.batch_size,), generator=generator)
    per_rank = config.batch_size // world
    starts = starts[rank * per_rank:(rank + 1) * per_rank]  # (B_rank,)
    windows = tokens[starts[:, None] + torch.arange(config.block_size + 1)]  # (B_rank, T + 1)
    return Batch(windows[:, :-1], windows[:, 1:])


def local_bytes(tensors) -> int:
    """Bytes this rank really holds for ``tensors`` (a sharded DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.ndim == 0:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def _optimizer(model: torch.nn.Module, config: DistConfig) -> torch.optim.Optimizer:
    # foreach=False: the same per-tensor arithmetic on plain tensors and on FSDP's DTensor shards.
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0, foreach=False)


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor,
                config: DistConfig, start: int, stop: int) -> list[float]:
    """Train steps ``start .. stop - 1`` on this rank's slices; return the global mean loss per step
    (all-reduced across ranks, so every rank returns the same curve)."""
    rank, world = rank_and_world()
    losses = []
    model.train()
    for step in range(start, stop):
        x, y = rank_batch(tokens, config, step, rank, world)
        loss = model(x, y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        losses.append(value.item())
    return losses


def reference_losses(config: DistConfig, tokens: torch.Tensor | None = None, vocab_size: int | None = None) -> list[float]:
    """Single-process training on the whole global batch (no dropout): the curve DDP must reproduce."""
    if tokens is None:
        tokens, vocab_size = load_tokens(config)
    model = make_model(config, vocab_size, dropout=0.0)
    losses = []
    optimizer = _optimizer(model, config)
    for step in range(config.steps):
        x, y = rank_batch(tokens, config, step, 0, 1)
        loss = model(x, y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _memory(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    return {"params": local_bytes(model.parameters()), "grads": local_bytes(p.grad for p in model.parameters()),
            "optimizer": local_bytes(v for s in optimizer.state.values() for v in s.values())}


def _gather(obj):
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def run_ddp(config: DistConfig, tokens: torch.Tensor, vocab_size: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_model(config, vocab_size, dropout=0.0))
    optimizer = _optimizer(model, config)
    losses = train_steps(model, optimizer, tokens, config, 0, config.steps)
    memory = _memory(model, optimizer)
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    sums = _gather(checksum)
    return {"losses": losses, "memory": _gather(memory), "replicas_identical": len(set(sums)) == 1,
            "full_param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def run_fsdp(config: DistConfig, tokens: torch.Tensor, vocab_size: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _, world = rank_and_world()
    mesh = init_device_mesh("cpu", (world,))
    model = make_model(config, vocab_size, dropout=0.0)
    for block in model.h:  # one all-gather per block: only one block's full weights exist at a time
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the rest: embeddings (tied with the head), final norm
    optimizer = _optimizer(model, config)
    losses = train_steps(model, optimizer, tokens, config, 0, config.steps)
    return {"losses": losses, "memory": _gather(_memory(model, optimizer)),
            "sharded": all(hasattr(p, "to_local") for p in model.parameters())}


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> Path:
    """Save this rank's training state to ``path/rank{r}.pt``: model and optimizer state, the step, and
    this rank's RNG state (dropout). Written to a temporary file and renamed, so a crash mid-write
    never leaves a corrupt checkpoint."""
    rank, _ = rank_and_world()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "rng": torch.get_rng_state()}
    target = path / f"rank{rank}.pt"
    tmp = target.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)
    return target


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore what :func:`save_checkpoint` saved for this rank; returns the step to continue from."""
    rank, _ = rank_and_world()
    state = torch.load(Path(path) / f"rank{rank}.pt", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def _ddp_with_dropout(config: DistConfig, vocab_size: int, init_seed: int | None = None):
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = rank_and_world()
    model = make_model(config, vocab_size, dropout=config.dropout, init_seed=init_seed)
    if world > 1:
        model = DDP(model)
    torch.manual_seed(config.seed + 1 + rank)  # each rank its own dropout stream
    return model, _optimizer(model, config)


def run_train_phase(config: DistConfig, ckpt: Path) -> dict:
    tokens, vocab = load_tokens(config)
    results = {"config": asdict(config), "world_size": rank_and_world()[1],
               "ddp": run_ddp(config, tokens, vocab), "fsdp": run_fsdp(config, tokens, vocab)}
    model, optimizer = _ddp_with_dropout(config, vocab)
    results["uninterrupted"] = train_steps(model, optimizer, tokens, config, 0, config.steps)
    model, optimizer = _ddp_with_dropout(config, vocab)
    results["before_checkpoint"] = train_steps(model, optimizer, tokens, config, 0, config.resume_at)
    save_checkpoint(ckpt, model, optimizer, config.resume_at)
    return results


def run_resume_phase(config: DistConfig, ckpt: Path) -> dict:
    tokens, vocab = load_tokens(config)
    model, optimizer = _ddp_with_dropout(config, vocab, init_seed=config.seed + 12345)  # deliberately different
    fresh_loss = train_steps(*_ddp_with_dropout(config, vocab, init_seed=config.seed + 12345), tokens, config,
                             config.resume_at, config.resume_at + 1)[0]
    start = load_checkpoint(ckpt, model, optimizer)
    return {"world_size": rank_and_world()[1], "resumed_from": start, "loss_without_checkpoint": fresh_loss,
            "after_resume": train_steps(model, optimizer, tokens, config, start, config.steps)}


def launch(phase: str, out: str | Path, ckpt: str | Path, nproc: int = 2, steps: int = DistConfig.steps,
           resume_at: int = DistConfig.resume_at, timeout: float = 300) -> dict:
    """Start ``nproc`` processes with ``torchrun`` (``python -m torch.distributed.run``) running one
    phase of this module, wait, and return the JSON results. Raises ``RuntimeError`` with the processes'
    output if they fail. This is what the notebook and the tests call."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "llmcourse.distributed", "--phase", phase, "--out", str(out), "--ckpt", str(ckpt),
           "--steps", str(steps), "--resume-at", str(resume_at)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcourse.distributed")
    parser.add_argument("--phase", choices=["train", "resume"], default="train")
    parser.add_argument("--out", required=True, help="JSON file rank 0 writes the results to")
    parser.add_argument("--ckpt", required=True, help="checkpoint folder")
    parser.add_argument("--steps", type=int, default=DistConfig.steps)
    parser.add_argument("--resume-at", type=int, default=DistConfig.resume_at)
    args = parser.parse_args(argv)
    config = DistConfig(steps=args.steps, resume_at=args.resume_at)
    torch.set_num_threads(1)  # two processes share the machine's cores
    dist.init_process_group("gloo")
    try:
        run = run_train_phase if args.phase == "train" else run_resume_phase
        results = run(config, Path(args.ckpt))
        dist.barrier()
        if dist.get_rank() == 0:
            Path(args.out).write_text(json.dumps(results, indent=1))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without the interpreter's teardown: there gloo's worker threads can abort a rank that has
    # finished its work ("terminate called without an active exception", SIGABRT; seen once in make test
    # after both phases had written their results; pytorch/pytorch#179291 describes the teardown race).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
