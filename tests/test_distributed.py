"""Two gloo processes started with torchrun: DDP equals single-process training on the global batch,
FSDP2 equals DDP with half the per-rank memory, and a resumed run reproduces the uninterrupted one."""
from __future__ import annotations

import pytest
import torch

from llmcourse import distributed as D


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    train = D.launch("train", folder / "train.json", folder / "ckpt")
    resume = D.launch("resume", folder / "resume.json", folder / "ckpt")
    return train, resume


@pytest.mark.slow
def test_ddp_equals_single_process_and_fsdp(runs):
    train, _ = runs
    config = D.DistConfig(**train["config"])
    assert train["world_size"] == 2
    reference = D.reference_losses(config)
    ddp, fsdp = train["ddp"]["losses"], train["fsdp"]["losses"]
    assert len(ddp) == config.steps and ddp[-1] < ddp[0] - 0.5  # it learns
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(reference), rtol=0, atol=2e-5)
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(ddp), rtol=0, atol=2e-5)
    assert train["ddp"]["replicas_identical"] and train["fsdp"]["sharded"]


@pytest.mark.slow
def test_fsdp_halves_per_rank_memory(runs):
    train, _ = runs
    full = train["ddp"]["full_param_bytes"]
    for ddp_rank, fsdp_rank in zip(train["ddp"]["memory"], train["fsdp"]["memory"]):
        assert ddp_rank["params"] == ddp_rank["grads"] == full and ddp_rank["optimizer"] == 2 * full
        for part in ("params", "grads", "optimizer"):
            assert abs(fsdp_rank[part] / ddp_rank[part] - 0.5) < 0.01  # each rank holds a half shard
    assert sum(r["params"] for r in train["fsdp"]["memory"]) >= full  # shards cover everything


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run_exactly(runs):
    train, resume = runs
    k = train["config"]["resume_at"]
    assert train["before_checkpoint"] == train["uninterrupted"][:k]
    assert resume["resumed_from"] == k
    assert resume["after_resume"] == train["uninterrupted"][k:]  # bit for bit
    # without the checkpoint the fresh model is far off: the comparison has teeth
    assert resume["loss_without_checkpoint"] > train["uninterrupted"][k] + 0.5


def test_rank_batches_partition_the_global_batch():
    config = D.DistConfig()
    tokens = torch.arange(1000)
    full = D.rank_batch(tokens, config, 3, 0, 1)
    halves = [D.rank_batch(tokens, config, 3, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([h.x for h in halves]), full.x)
    assert torch.equal(full.y[:, :-1], full.x[:, 1:])
    assert not torch.equal(D.rank_batch(tokens, config, 4, 0, 1).x, full.x)
    with pytest.raises(ValueError, match="divisible by the world size"):
        D.rank_batch(tokens, config, 0, 0, 3)
    with pytest.raises(ValueError, match="resume_at"):
        D.DistConfig(steps=4, resume_at=4)
