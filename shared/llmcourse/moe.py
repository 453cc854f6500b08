"""Mixture of experts: a router sends each token to ``k`` of ``E`` feed-forward "experts".

    p = softmax(x W_r)                    (N, E) router probabilities, in fp32
    (w, i) = top_k(p, k)                  the k best experts per token and their probabilities
    y = sum_j w_j * FFN_{i_j}(x)          only k experts run per token

So the model holds E feed-forward networks' worth of parameters but spends the compute of k of them:
*total* parameters grow with E, *active* parameters per token with k. Two practical additions:

- **Capacity** (Switch Transformer, GShard): each expert processes at most
  ``capacity = ceil(capacity_factor * N * k / E)`` token slots per batch, so every expert's batch has a
  fixed size; assignments beyond it are dropped (their output is 0, the residual connection carries the
  token on). First choices are served before second choices, earlier tokens before later ones.
- **Load-balancing loss** (Switch, eq. 4): ``aux = E * sum_i f_i * P_i`` with ``f_i`` the fraction of
  token assignments sent to expert i and ``P_i`` the mean router probability of expert i. It is 1 when
  the load is uniform and grows to E when one expert takes everything; ``P`` carries the gradient.

Dispatch is vectorised: :func:`moe_dispatch_batched` scatters tokens into an (E, capacity, C) buffer
and runs all experts with two batched matmuls (static shapes, no loops); :func:`moe_dispatch_loop`
(a loop over experts, never over tokens) is the readable reference it is tested against.
:class:`MoEGPT` puts the layer into the core :class:`~llmcourse.transformer.GPT` blocks.

Taught in ``modules/03_deployment/07_mixture_of_experts.py``.

References:
- Shazeer et al. 2017, "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer",
  arXiv:1701.06538
- Lepikhin et al. 2020, "GShard: Scaling Giant Models with Conditional Computation and Automatic
  Sharding", arXiv:2006.16668
- Fedus, Zoph & Shazeer 2021, "Switch Transformers: Scaling to Trillion Parameter Models with Simple and
  Efficient Sparsity", arXiv:2101.03961
- Jiang et al. 2024, "Mixtral of Experts", arXiv:2401.04088

Shape legend: B batch, T length, N tokens (= B * T), C model width, F expert hidden width, E experts,
k experts per token, S capacity (slots per expert).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import GPT, GPTConfig

__all__ = [
    "RouterOutput",
    "top_k_route",
    "load_balancing_loss",
    "expert_capacity",
    "MoEConfig",
    "MoEOutput",
    "moe_dispatch_loop",
    "moe_dispatch_grouped",
    "moe_dispatch_batched",
    "MoEFeedForward",
    "MoEGPTOutput",
    "MoEGPT",
    "ParamCounts",
    "moe_param_counts",
]


class RouterOutput(NamedTuple):
    """``weights`` (N, k) fp32 router probabilities of the chosen experts, ``indices`` (N, k) long,
    ``aux_loss`` scalar load-balancing loss, ``tokens_per_expert`` (E,) long (assignments before any
    capacity limit)."""

    weights: torch.Tensor
    indices: torch.Tensor
    aux_loss: torch.Tensor
    tokens_per_expert: torch.Tensor


def load_balancing_loss(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss ``E * sum_i f_i * P_i``.

    probs (N, E): router probabilities; indices (N, k): chosen experts. ``f_i`` = share of the N * k
    assignments that went to expert i (not differentiable), ``P_i`` = mean of probs[:, i]. Equals 1 for
    a perfectly uniform router, E when every token goes to one expert with probability 1.
    """
    E = probs.shape[-1]
    counts = torch.bincount(indices.reshape(-1), minlength=E)  # (E,)
    f = counts.float() / indices.numel()
    P = probs.float().mean(dim=0)  # (E,)
    return E * (f * P).sum()


def top_k_route(logits: torch.Tensor, k: int = 1, normalize: bool = False) -> RouterOutput:
    """Route N tokens to their ``k`` best experts: softmax over the E experts first (in fp32), then top-k.

    logits (N, E) -> :class:`RouterOutput`. ``normalize=True`` rescales the k chosen probabilities to
    sum to 1 (Mixtral); the default keeps them as they are (Switch, GShard), which for k = 1 keeps a
    gradient flowing to the router through the output ``w * FFN(x)``.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, E), got shape {tuple(logits.shape)}")
    E = logits.shape[1]
    if not isinstance(k, int) or not 1 <= k <= E:
        raise ValueError(f"k must be an int in 1..{E} (the number of experts), got {k!r}")
    probs = torch.softmax(logits.float(), dim=-1)  # (N, E)
    weights, indices = probs.topk(k, dim=-1)  # (N, k) each
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    aux = load_balancing_loss(probs, indices)
    tokens_per_expert = torch.bincount(indices.reshape(-1), minlength=E)
    return RouterOutput(weights, indices, aux, tokens_per_expert)


def expert_capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float | None) -> int:
    """Slots per expert: ``ceil(capacity_factor * n_tokens * k / n_experts)``; ``None`` = no limit
    (every assignment fits: ``n_tokens * k``)."""
    if capacity_factor is None:
        return n_tokens * k
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be positive or None, got {capacity_factor}")
    return max(1, math.ceil(capacity_factor * n_tokens * k / n_experts))


_ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


@dataclass
class MoEConfig:
    """Configuration of :class:`MoEFeedForward`."""

    d_model: int = 64  # C
    d_ff: int | None = None  # F: hidden width of each expert; None = 4 * d_model
    n_experts: int = 8  # E
    top_k: int = 1  # k experts per token (Switch: 1, Mixtral: 2)
    capacity_factor: float | None = 1.25  # slots per expert relative to a uniform share; None = no drops
    normalize_weights: bool = False  # rescale the k router weights to sum to 1 (Mixtral)
    activation: Literal["gelu", "gelu_tanh", "relu"] = "gelu_tanh"
    bias: bool = True  # biases in the experts
    impl: Literal["grouped", "batched", "loop"] = "grouped"  # dispatch implementation (same result)

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.d_model < 1 or self.d_ff < 1 or self.n_experts < 1:
            raise ValueError(f"d_model ({self.d_model}), d_ff ({self.d_ff}) and n_experts ({self.n_experts}) "
                             "must be positive")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) must be in 1..n_experts ({self.n_experts})")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive or None, got {self.capacity_factor}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
        if self.impl not in _DISPATCH:
            raise ValueError(f"impl must be one of {tuple(_DISPATCH)}, got {self.impl!r}")

    @classmethod
    def tiny(cls, **overrides) -> MoEConfig:
        return cls(**{"d_model": 16, "d_ff": 32, "n_experts": 4, **overrides})


class MoEOutput(NamedTuple):
    """``y`` (..., C) the layer's output, ``aux_loss`` the load-balancing loss (scalar), and
    ``tokens_per_expert`` (E,) the assignments each expert received (before capacity drops)."""

    y: torch.Tensor
    aux_loss: torch.Tensor
    tokens_per_expert: torch.Tensor


def _act(h: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    return F.gelu(h) if activation == "gelu" else F.relu(h)


def _assignments(route: RouterOutput, capacity: int):
    """Flatten the (N, k) routing choice-major (all first choices, then all second choices: GShard's
    priority) and give each assignment its slot in its expert's queue. Returns expert (kN,), token
    (kN,), weight (kN,), position (kN,) and keep (kN,) = position < capacity."""
    N, k = route.indices.shape
    E = route.tokens_per_expert.numel()
    expert = route.indices.t().reshape(-1)  # (kN,)
    token = torch.arange(N, device=expert.device).repeat(k)  # (kN,)
    weight = route.weights.t().reshape(-1)  # (kN,)
    one_hot = F.one_hot(expert, E)  # (kN, E)
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # (kN,) rank within its expert's queue
    return expert, token, weight, position, position < capacity


def _expert_ffn(x: torch.Tensor, e: int, w_up, b_up, w_down, b_down, activation: str) -> torch.Tensor:
    """Expert ``e``'s FFN on the rows of x (n, C) -> (n, C)."""
    h = x @ w_up[e] if b_up is None else torch.addmm(b_up[e], x, w_up[e])  # (n, F)
    h = _act(h, activation)
    return h @ w_down[e] if b_down is None else torch.addmm(b_down[e], h, w_down[e])  # (n, C)


def moe_dispatch_loop(x: torch.Tensor, route: RouterOutput, w_up: torch.Tensor, b_up: torch.Tensor | None,
                      w_down: torch.Tensor, b_down: torch.Tensor | None, capacity: int,
                      activation: str = "gelu_tanh") -> torch.Tensor:
    """Reference dispatch, the specification the fast paths are tested against: for each expert, pick
    the assignments it serves (within capacity), run its FFN on those tokens, weight the results.
    x (N, C); w_up (E, C, F), b_up (E, F) or None, w_down (E, F, C), b_down (E, C) or None -> (N, C).
    A Python loop over the E experts, never over tokens."""
    N, C = x.shape
    expert, token, weight, _, keep = _assignments(route, capacity)
    results = x.new_zeros(expert.numel(), C)  # (kN, C): one row per assignment, 0 when dropped
    for e in range(w_up.shape[0]):
        sel = ((expert == e) & keep).nonzero().squeeze(1)  # the assignments expert e serves
        out = _expert_ffn(x[token[sel]], e, w_up, b_up, w_down, b_down, activation)
        results[sel] = out * weight[sel, None].to(out.dtype)
    # Assignments are choice-major (k, N): summing the k choices of each token is a reshape and a sum.
    # (A scatter-add, index_add_, would do the same but is several times slower on CPU.)
    return results.view(-1, N, C).sum(dim=0)


def moe_dispatch_grouped(x: torch.Tensor, route: RouterOutput, w_up: torch.Tensor, b_up: torch.Tensor | None,
                         w_down: torch.Tensor, b_down: torch.Tensor | None, capacity: int,
                         activation: str = "gelu_tanh") -> torch.Tensor:
    """Fast dispatch with exactly as much compute as there are kept assignments (the idea behind
    "grouped GEMM" kernels, MegaBlocks): sort the kept assignments by expert with one stable argsort,
    gather the tokens once into contiguous groups, run each expert on its group, and put the results
    back with one inverse permutation. Same arguments as :func:`moe_dispatch_loop`."""
    N, C = x.shape
    E = w_up.shape[0]
    expert, token, weight, _, keep = _assignments(route, capacity)
    k = expert.numel() // N
    key = torch.where(keep, expert, torch.full_like(expert, E))  # dropped assignments sort last
    order = torch.argsort(key, stable=True)  # (kN,) assignments grouped by expert, priority kept
    counts = torch.bincount(key, minlength=E + 1)[:E].tolist()  # group sizes (one host sync)
    n_kept = sum(counts)
    xs = x.expand(k, N, C).reshape(k * N, C)[order[:n_kept]]  # (n_kept, C) tokens, grouped
    outs = [_expert_ffn(chunk, e, w_up, b_up, w_down, b_down, activation)
            for e, chunk in enumerate(xs.split(counts)) if chunk.shape[0]]
    grouped = torch.cat(outs) if outs else xs  # (n_kept, C)
    results = x.new_zeros(k * N, C)
    results[order[:n_kept]] = grouped * weight[order[:n_kept], None].to(grouped.dtype)
    return results.view(k, N, C).sum(dim=0)


def moe_dispatch_batched(x: torch.Tensor, route: RouterOutput, w_up: torch.Tensor, b_up: torch.Tensor | None,
                         w_down: torch.Tensor, b_down: torch.Tensor | None, capacity: int,
                         activation: str = "gelu_tanh") -> torch.Tensor:
    """Fast dispatch with static shapes (what GShard/Switch do on accelerators): scatter every kept
    assignment into slot ``expert * S + position`` of an (E * S, C) buffer, run all experts at once with
    two batched matmuls over (E, S, C), gather the slots back and add them, weighted, to their tokens.
    Dropped assignments write to a spare row that is never read. Same arguments as :func:`moe_dispatch_loop`."""
    N, C = x.shape
    E, S = w_up.shape[0], capacity
    expert, token, weight, position, keep = _assignments(route, S)
    k = expert.numel() // N
    slot = torch.where(keep, expert * S + position, torch.full_like(position, E * S))  # (kN,), E*S = spare
    buffer = x.new_zeros(E * S + 1, C)
    # Assignments are choice-major, so the k copies of x are a broadcast, not a gather.
    buffer[slot] = x.expand(k, N, C).reshape(k * N, C)  # each real slot gets at most one token
    grouped = buffer[:-1].view(E, S, C)
    h = torch.bmm(grouped, w_up) if b_up is None else torch.baddbmm(b_up[:, None, :], grouped, w_up)  # (E, S, F)
    h = _act(h, activation)
    out = torch.bmm(h, w_down) if b_down is None else torch.baddbmm(b_down[:, None, :], h, w_down)  # (E, S, C)
    # Gather each assignment's result (dropped ones read any row and get weight 0), then sum the k
    # choices of each token: a reshape and a sum instead of a scatter-add.
    gathered = out.reshape(E * S, C)[slot.clamp(max=E * S - 1)]  # (kN, C)
    gate = (weight * keep).to(out.dtype)[:, None]  # (kN, 1)
    return (gathered * gate).view(k, N, C).sum(dim=0)  # (N, C)


_DISPATCH = {"grouped": moe_dispatch_grouped, "batched": moe_dispatch_batched, "loop": moe_dispatch_loop}


class MoEFeedForward(nn.Module):
    """A mixture-of-experts feed-forward layer: (..., C) -> :class:`MoEOutput` with y (..., C).

    Each expert is the position-wise FFN ``down(act(up(x)))`` of width F; the experts' weights are
    stacked, ``w_up`` (E, C, F) and ``w_down`` (E, F, C), so all experts run in one batched matmul.
    With ``n_experts=1`` and no capacity limit it is exactly a dense FFN (the router's only probability
    is 1).
    """

    def __init__(self, config: MoEConfig, n_layer: int = 1):
        super().__init__()
        self.config = c = config
        E, C, Fh = c.n_experts, c.d_model, c.d_ff
        self.router = nn.Linear(C, E, bias=False)
        self.w_up = nn.Parameter(torch.empty(E, C, Fh))
        self.w_down = nn.Parameter(torch.empty(E, Fh, C))
        self.b_up = nn.Parameter(torch.zeros(E, Fh)) if c.bias else None
        self.b_down = nn.Parameter(torch.zeros(E, C)) if c.bias else None
        # GPT-2 initialisation, as in the dense blocks: the residual projection is scaled down with depth.
        nn.init.normal_(self.router.weight, std=0.02)
        nn.init.normal_(self.w_up, std=0.02)
        nn.init.normal_(self.w_down, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, x: torch.Tensor) -> MoEOutput:
        if x.shape[-1] != self.config.d_model:
            raise ValueError(f"expected last dimension {self.config.d_model}, got shape {tuple(x.shape)}")
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, C)
        c = self.config
        route = top_k_route(self.router(flat), c.top_k, c.normalize_weights)
        if c.capacity_factor is None:  # no drops: exactly as many slots as the busiest expert needs
            capacity = max(1, int(route.tokens_per_expert.max()))
        else:
            capacity = expert_capacity(flat.shape[0], c.n_experts, c.top_k, c.capacity_factor)
        dispatch = _DISPATCH[c.impl]
        y = dispatch(flat, route, self.w_up, self.b_up, self.w_down, self.b_down, capacity, c.activation)
        return MoEOutput(y.view(shape), route.aux_loss, route.tokens_per_expert)

    def num_parameters(self, active: bool = False) -> int:
        """All parameters, or ``active=True`` those used per token (router + k experts)."""
        total = sum(p.numel() for p in self.parameters())
        if not active:
            return total
        per_expert = sum(p.numel() for p in (self.w_up, self.w_down, self.b_up, self.b_down) if p is not None)
        per_expert //= self.config.n_experts
        return total - (self.config.n_experts - self.config.top_k) * per_expert


class _MoEMLP(nn.Module):
    """Adapter that lets a :class:`MoEFeedForward` sit in a core ``TransformerBlock``'s ``mlp`` slot, which
    expects a tensor back: it returns ``y`` and keeps the last aux loss and expert loads as attributes
    (read and cleared by :class:`MoEGPT` after each forward)."""

    def __init__(self, config: MoEConfig, n_layer: int):
        super().__init__()
        self.moe = MoEFeedForward(config, n_layer)
        self.aux_loss: torch.Tensor | None = None
        self.tokens_per_expert: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.moe(x)
        self.aux_loss, self.tokens_per_expert = out.aux_loss, out.tokens_per_expert
        return out.y


class MoEGPTOutput(NamedTuple):
    """``logits`` (B, T, V); ``loss`` = lm_loss + aux_loss_coef * aux_loss (None without targets);
    ``lm_loss``; ``aux_loss`` (mean over MoE layers); ``tokens_per_expert`` (L_moe, E)."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    aux_loss: torch.Tensor
    tokens_per_expert: torch.Tensor


class MoEGPT(nn.Module):
    """A GPT (the core :class:`~llmcourse.transformer.GPT`) whose feed-forward networks are MoE layers.

    ``moe_every=1`` makes every block's FFN an MoE (Mixtral); ``2`` every second one (Switch, GShard).
    With ``top_k=1`` and experts as wide as the dense model's FFN, each token costs the same compute as
    in the dense GPT (plus the tiny router) while the model holds ~E times the FFN parameters.
    """

    def __init__(self, config: GPTConfig, moe: MoEConfig, moe_every: int = 1, aux_loss_coef: float = 0.01):
        super().__init__()
        if moe.d_model != config.d_model:
            raise ValueError(f"MoEConfig.d_model ({moe.d_model}) must equal GPTConfig.d_model ({config.d_model})")
        if moe_every < 1:
            raise ValueError(f"moe_every must be >= 1, got {moe_every}")
        if aux_loss_coef < 0:
            raise ValueError(f"aux_loss_coef must be >= 0, got {aux_loss_coef}")
        self.config, self.moe_config, self.aux_loss_coef = config, moe, aux_loss_coef
        self.gpt = GPT(config)
        for i, block in enumerate(self.gpt.h):
            if i % moe_every == moe_every - 1:
                block.mlp = _MoEMLP(moe, config.n_layer)

    @property
    def moe_layers(self) -> list[MoEFeedForward]:
        return [m.moe for m in self.modules() if isinstance(m, _MoEMLP)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> MoEGPTOutput:
        out = self.gpt(idx, targets)
        adapters = [m for m in self.modules() if isinstance(m, _MoEMLP)]
        aux = torch.stack([m.aux_loss for m in adapters]).mean()
        loads = torch.stack([m.tokens_per_expert for m in adapters])  # (L_moe, E)
        for m in adapters:
            m.aux_loss = m.tokens_per_expert = None
        loss = None if out.loss is None else out.loss + self.aux_loss_coef * aux
        return MoEGPTOutput(out.logits, loss, out.loss, aux, loads)

    def num_parameters(self, active: bool = False) -> int:
        """Total parameters (tied weights once), or those a token actually uses (``active=True``)."""
        total = self.gpt.num_parameters()
        if not active:
            return total
        return total - sum(m.num_parameters() - m.num_parameters(active=True) for m in self.moe_layers)


class ParamCounts(NamedTuple):
    total: int
    active: int


def moe_param_counts(d_model: int, n_layers: int, d_ff: int, n_experts: int, top_k: int, vocab_size: int,
                     n_heads: int, n_kv_heads: int | None = None, gated: bool = True,
                     tied_embeddings: bool = False) -> ParamCounts:
    """Total and active parameters of a Llama/Mixtral-style MoE decoder (no biases, RMSNorm, every FFN
    an MoE of ``n_experts`` SwiGLU experts (3 matrices if ``gated``), ``top_k`` active per token).

    Mixtral 8x7B (C=4096, L=32, F=14336, E=8, k=2, V=32000, 32 heads, 8 KV heads) gives 46.7B total and
    12.9B active, the figures of Jiang et al. 2024.
    """
    kv = n_heads if n_kv_heads is None else n_kv_heads
    head_dim = d_model // n_heads
    attention = 2 * d_model * d_model + 2 * d_model * kv * head_dim  # q, o and k, v projections
    expert = (3 if gated else 2) * d_model * d_ff
    router = d_model * n_experts
    norms = 2 * d_model
    embeddings = vocab_size * d_model * (1 if tied_embeddings else 2)
    shared = n_layers * (attention + router + norms) + embeddings + d_model  # + final norm
    return ParamCounts(shared + n_layers * n_experts * expert, shared + n_layers * top_k * expert)
