"""Tests for llmcourse.moe: the router and its load-balancing loss against hand computations, the fast
dispatch paths against the reference loop (values and gradients), capacity drops, equivalence with a
dense FFN, and the MoE decoder."""
from __future__ import annotations

import pytest
import torch

from llmcourse import moe as M
from llmcourse.transformer import FeedForward, GPTConfig

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


def test_top_k_route_softmax_then_top_k():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 2.0], [1.0, 1.0, 5.0, 1.0]])
    out = M.top_k_route(logits, k=2)
    probs = torch.softmax(logits, -1)
    assert out.indices[:2].tolist() == [[0, 1], [1, 3]] and out.indices[2, 0] == 2  # row 2 ties 0, 1, 3
    torch.testing.assert_close(out.weights, probs.gather(1, out.indices))  # softmax over all E, not over k
    assert out.tokens_per_expert.tolist() == torch.bincount(out.indices.reshape(-1), minlength=4).tolist()
    f = out.tokens_per_expert.float() / 6
    torch.testing.assert_close(out.aux_loss, 4 * (f * probs.mean(0)).sum())
    normed = M.top_k_route(logits, k=2, normalize=True)
    torch.testing.assert_close(normed.weights.sum(-1), torch.ones(3))


def test_load_balancing_loss_extremes():
    E = 8
    uniform = M.top_k_route(torch.zeros(64, E) + torch.eye(E).repeat(8, 1) * 1e-3, k=1)
    assert abs(uniform.aux_loss.item() - 1.0) < 1e-2  # balanced router: loss 1
    collapsed = M.top_k_route(torch.tensor([[50.0] + [0.0] * (E - 1)]).repeat(64, 1), k=1)
    assert abs(collapsed.aux_loss.item() - E) < 1e-3  # everything to one expert: loss E
    logits = torch.randn(32, E, requires_grad=True)
    M.top_k_route(logits, 1).aux_loss.backward()
    assert logits.grad.abs().sum() > 0  # the router probabilities carry the gradient


def test_top_k_route_errors():
    with pytest.raises(ValueError, match="k must be an int in 1..4"):
        M.top_k_route(torch.zeros(3, 4), k=5)
    with pytest.raises(ValueError, match=r"logits must be \(N, E\)"):
        M.top_k_route(torch.zeros(4), k=1)


def test_expert_capacity():
    assert M.expert_capacity(4096, 8, 1, 1.25) == 640
    assert M.expert_capacity(10, 4, 2, 1.0) == 5
    assert M.expert_capacity(10, 4, 2, None) == 20
    with pytest.raises(ValueError, match="capacity_factor"):
        M.expert_capacity(10, 4, 1, 0.0)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("impl", ["grouped", "batched"])
@pytest.mark.parametrize("k,capacity_factor", [(1, 1.25), (1, 0.5), (2, 1.0), (2, None), (3, 2.0)])
@pytest.mark.parametrize("shape", [(1, 1), (2, 13), (4, 33)])
def test_fast_dispatch_equals_reference(device, impl, k, capacity_factor, shape):
    torch.manual_seed(0)
    config = M.MoEConfig(d_model=12, d_ff=20, n_experts=5, top_k=k, capacity_factor=capacity_factor)
    layer = M.MoEFeedForward(config).to(device)
    with torch.no_grad():  # non-zero biases, so a dropped token (output 0) differs from a served one
        layer.b_up.normal_()
        layer.b_down.normal_()
    x = torch.randn(*shape, 12, device=device, requires_grad=True)
    layer.config.impl = "loop"
    ref = layer(x)
    grads_ref = torch.autograd.grad(ref.y.square().sum(), [x, *layer.parameters()])
    layer.config.impl = impl
    out = layer(x)
    grads = torch.autograd.grad(out.y.square().sum(), [x, *layer.parameters()])
    assert out.y.shape == x.shape
    torch.testing.assert_close(out.y, ref.y)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)
    assert torch.equal(out.tokens_per_expert, ref.tokens_per_expert)


def test_capacity_drops_overflowing_tokens_in_priority_order():
    torch.manual_seed(0)
    layer = M.MoEFeedForward(M.MoEConfig(d_model=8, d_ff=16, n_experts=2, top_k=1, capacity_factor=0.5))
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] += 1.0  # every token prefers expert 0 (x has positive entries)
    x = torch.rand(10, 8) + 0.1
    out = layer(x)
    capacity = M.expert_capacity(10, 2, 1, 0.5)  # 3 slots
    assert out.tokens_per_expert.tolist() == [10, 0]
    served = out.y.abs().sum(-1) > 0
    assert served.tolist() == [True] * capacity + [False] * (10 - capacity)  # first come, first served
    no_limit = M.MoEFeedForward(M.MoEConfig(d_model=8, d_ff=16, n_experts=2, capacity_factor=None))
    no_limit.load_state_dict(layer.state_dict())
    assert (no_limit(x).y.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu", "relu"])
def test_single_expert_equals_dense_ffn(activation):
    torch.manual_seed(0)
    dense = FeedForward(16, 40, activation=activation)
    layer = M.MoEFeedForward(M.MoEConfig(d_model=16, d_ff=40, n_experts=1, capacity_factor=None,
                                         activation=activation))
    with torch.no_grad():
        layer.w_up[0].copy_(dense.up_proj.weight.T)
        layer.b_up[0].copy_(dense.up_proj.bias)
        layer.w_down[0].copy_(dense.down_proj.weight.T)
        layer.b_down[0].copy_(dense.down_proj.bias)
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(layer(x).y, dense(x))


def test_moe_config_validation_and_param_counts():
    with pytest.raises(ValueError, match=r"top_k \(3\) must be in 1..n_experts \(2\)"):
        M.MoEConfig(n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="impl must be one of"):
        M.MoEConfig(impl="magic")
    layer = M.MoEFeedForward(M.MoEConfig(d_model=8, d_ff=16, n_experts=4, top_k=1))
    per_expert = 8 * 16 * 2 + 16 + 8
    assert layer.num_parameters() == 4 * per_expert + 8 * 4
    assert layer.num_parameters(active=True) == per_expert + 8 * 4
    with pytest.raises(ValueError, match="expected last dimension 8"):
        layer(torch.zeros(2, 9))
    mixtral = M.moe_param_counts(4096, 32, 14336, 8, 2, 32000, 32, 8)
    assert round(mixtral.total / 1e9, 1) == 46.7 and round(mixtral.active / 1e9, 1) == 12.9


def test_moe_gpt_trains_and_is_causal():
    torch.manual_seed(0)
    config = GPTConfig.tiny(vocab_size=11, block_size=16)
    model = M.MoEGPT(config, M.MoEConfig(d_model=config.d_model, n_experts=4, capacity_factor=None))
    assert len(model.moe_layers) == config.n_layer
    assert model.num_parameters() > model.num_parameters(active=True)
    idx = torch.randint(0, 11, (2, 16))
    out = model(idx, idx)
    assert out.logits.shape == (2, 16, 11) and out.tokens_per_expert.shape == (config.n_layer, 4)
    assert out.tokens_per_expert.sum().item() == config.n_layer * 32
    torch.testing.assert_close(out.loss, out.lm_loss + 0.01 * out.aux_loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # changing a future token never changes earlier logits (no capacity limit: no cross-token drops)
    idx2 = idx.clone()
    idx2[:, 10] = (idx2[:, 10] + 1) % 11
    torch.testing.assert_close(model(idx2).logits[:, :10], out.logits[:, :10])
    half = M.MoEGPT(config, M.MoEConfig(d_model=config.d_model, n_experts=4), moe_every=2)
    assert len(half.moe_layers) == config.n_layer // 2
    with pytest.raises(ValueError, match="must equal GPTConfig.d_model"):
        M.MoEGPT(config, M.MoEConfig(d_model=8))
