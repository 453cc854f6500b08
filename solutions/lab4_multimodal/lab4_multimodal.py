# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/labs/lab4_multimodal/lab4_multimodal.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # Lab 4: Building blocks of multimodal models
#
# The Module 4 demos trained a ViT, a CLIP, a Flamingo and a RetNet-style layer. In this lab you write the
# key piece of each yourself: the patch embedding that turns an image into tokens, the contrastive loss
# that aligns images with captions, zero-shot classification from text embeddings, a perceiver-resampler
# block, and retention in its recurrent form, checked against the parallel form. At the end your CLIP loss
# and zero-shot classifier run on the digits.
#
# | Part | You write | Points |
# |---|---|---|
# | 1 | `patch_embed(images, weight, bias, patch_size)` | 3 |
# | 2 | `clip_loss(image_emb, text_emb, temperature)` | 3 |
# | 3 | `class_embeddings(prompt_emb)` and `zero_shot_classify(image_emb, class_emb)` | 2 + 2 |
# | 4 | `ResamplerBlock.forward(latents, media)` | 4 |
# | 5 | `decay_mask(T, gamma)` and `retention_recurrent(q, k, v, gamma)` | 2 + 3 |
#
# **How this lab works**
#
# - Write your code in the answer cells, where it says `# YOUR CODE HERE` (delete the
#   `raise NotImplementedError()`). Keep the names and signatures given: the tests call them.
# - After each answer comes a test cell. Run it: no output means the visible checks passed; an
#   `AssertionError` says what to fix. When grading, the same cells also run **hidden tests** (other
#   shapes, a batch of one, odd sizes, comparisons with reference implementations), so make each part
#   correct in general, not just on the visible examples.
# - Each part is graded on its own: no part needs another part of yours.
# - Use tensor operations (`reshape`, `permute`, `@`, `F.normalize`, `F.cross_entropy`, `torch.softmax`,
#   `F.scaled_dot_product_attention`, ...) but not `llmcourse`, whose versions of these functions are what
#   the hidden tests compare with.
# - Before you submit: *Kernel → Restart Kernel and Run All Cells*, and check that every test cell runs.
#
# Shape letters: `B` batch, `C` channels, `H`/`W` image size (in Part 5, `H` is heads), `P` patch size,
# `N` patches or visual features, `D` width, `E` embedding width, `K` classes, `L` latents, `T` tokens.

# %% [markdown]
# ## Setup
#
# Run both cells; do not edit them (they are locked and restored when grading). The second defines
# `expect_close`, a comparison with readable messages that the test cells use.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false}
import math

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.utils import quiet, seed_everything

quiet()
seed_everything(0)

# %% nbgrader={"grade": false, "grade_id": "test_helpers", "locked": true, "schema_version": 3, "solution": false}
# Helpers for the test cells. The reference implementations imported here are only used to check
# your answers on inputs you do not see.
from llmcourse import clip as ref_clip
from llmcourse import flamingo as ref_flamingo
from llmcourse import retention as ref_retention
from llmcourse import vit as ref_vit


def expect_close(actual, expected, what, atol=1e-5, rtol=1e-4):
    """Assert that `actual` has `expected`'s shape and values; the message says what differs."""
    assert isinstance(actual, torch.Tensor), f"{what}: expected a torch.Tensor, got {type(actual).__name__}"
    expected = torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    close = torch.isclose(actual, expected, rtol=rtol, atol=atol)
    if not bool(close.all()):
        n_nan = int(actual.isnan().sum())
        worst = (actual - expected).abs().nan_to_num(nan=float("inf")).max().item()
        hint = f" ({n_nan} NaN)" if n_nan else ""
        raise AssertionError(f"{what}: {int((~close).sum())} of {close.numel()} values are wrong{hint}, "
                             f"largest difference {worst:.3g}")


def random_images(B, C, H, W, seed):
    return torch.rand(B, C, H, W, generator=torch.Generator().manual_seed(seed))


# %% [markdown]
# ## Part 1. Patch embedding (3 points)
#
# A Vision Transformer cuts a `(B, C, H, W)` image into non-overlapping `P x P` patches, flattens each
# patch into a vector of `C * P * P` numbers, and maps it to width `D` with one shared linear layer:
# $z_i = x_i W^\top + b$. The result is a sequence of `N = (H / P) * (W / P)` tokens.
#
# **Write** `patch_embed(images, weight, bias, patch_size)`:
#
# - `images` `(B, C, H, W)`, with `H` and `W` divisible by `P = patch_size`; `weight` `(D, C * P * P)`,
#   `bias` `(D,)`. Return `(B, N, D)`.
# - Patches in **raster order**: left to right along the first row of patches, then the next row.
# - Each patch flattened **channel first, then row, then column** inside the patch: this is the layout
#   of a `Conv2d(C, D, kernel_size=P, stride=P)` kernel, `weight.view(D, C, P, P)`. A plain
#   `images.reshape(B, N, -1)` does *not* give patches: neighbouring numbers in memory are neighbouring
#   pixels of one image row, which cross patch boundaries.

# %% nbgrader={"grade": false, "grade_id": "patch_answer", "locked": false, "schema_version": 3, "solution": true}
def patch_embed(images, weight, bias, patch_size):
    """(B, C, H, W) images -> (B, N, D) patch tokens: flatten P x P patches (C, row, col), then x W^T + b."""
    ### BEGIN SOLUTION
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)  # split each axis into (patch index, offset)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/P, W/P, C, P, P): patch grid first
    patches = x.reshape(B, (H // P) * (W // P), C * P * P)  # (B, N, C*P*P)
    return patches @ weight.T + bias  # (B, N, D)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "patch_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# By hand: a 4x4 image with pixel values 0..15, 2x2 patches, and an identity "embedding" (D = 4).
image = torch.arange(16.0).view(1, 1, 4, 4)
tokens = patch_embed(image, torch.eye(4), torch.zeros(4), 2)
expect_close(tokens, torch.tensor([[[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15.0]]]),
             "the four 2x2 patches of a 4x4 image (identity embedding)")
# Same as a strided convolution with the same weights (a grey 8x8 image, 2x2 patches, D = 16).
images = random_images(2, 1, 8, 8, seed=1)
conv = nn.Conv2d(1, 16, kernel_size=2, stride=2)
expected = conv(images).flatten(2).transpose(1, 2)  # (B, N, D)
expect_close(patch_embed(images, conv.weight.view(16, -1), conv.bias, 2), expected, "patch embedding vs Conv2d")
### BEGIN HIDDEN TESTS
for _i, (_B, _C, _H, _W, _P, _D) in enumerate([(3, 3, 8, 12, 4, 10), (1, 2, 6, 6, 3, 5), (2, 3, 4, 4, 1, 7),
                                              (1, 1, 5, 5, 5, 3), (4, 3, 16, 8, 2, 6)]):
    _images = random_images(_B, _C, _H, _W, seed=10 + _i)
    _layer = ref_vit.PatchEmbedding(_C, _P, _D)
    with torch.no_grad():
        _layer.proj.bias.normal_()
        _expected = _layer(_images)
        _conv = _layer.as_conv2d()
        expect_close(_expected, _conv(_images).flatten(2).transpose(1, 2), "internal check")
    expect_close(patch_embed(_images, _layer.proj.weight.detach(), _layer.proj.bias.detach(), _P), _expected,
                 f"patch embedding of images {(_B, _C, _H, _W)} with P={_P}, D={_D}")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2. The CLIP loss (3 points)
#
# For a batch of `B` matching image-caption pairs (row `i` of `image_emb` belongs with row `i` of
# `text_emb`), CLIP normalises every embedding to unit length, computes all `B x B` cosine similarities,
# divides them by a temperature $\tau$, and asks each image to pick its caption and each caption to pick
# its image:
#
# $$\text{logits} = \frac{\hat I \hat T^\top}{\tau}, \qquad
# \mathcal L = \tfrac12\big[\operatorname{CE}(\text{logits}, \text{diag}) + \operatorname{CE}(\text{logits}^\top, \text{diag})\big].$$
#
# **Write** `clip_loss(image_emb, text_emb, temperature)`: `image_emb` and `text_emb` are `(B, E)` (not
# normalised), `temperature` a positive float. Return the scalar loss (a 0-d tensor), averaged over the
# batch in each direction. The three classic slips: forgetting one direction, forgetting the temperature,
# and normalising along the wrong dimension (each *embedding* must have length 1).

# %% nbgrader={"grade": false, "grade_id": "clip_answer", "locked": false, "schema_version": 3, "solution": true}
def clip_loss(image_emb, text_emb, temperature):
    """Symmetric InfoNCE: mean of the image->text and text->image cross-entropies of normalised
    embeddings' cosine similarities / temperature. image_emb, text_emb (B, E) -> scalar."""
    ### BEGIN SOLUTION
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = image_emb @ text_emb.T / temperature  # (B, B): row i = image i against every caption
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "clip_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# Two pairs that match perfectly (orthogonal embeddings): with a low temperature the loss is ~0,
# with temperature 1 it is log(1 + e^-1) = 0.3133 (a cosine of 1 against a cosine of 0).
aligned = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
expect_close(clip_loss(aligned, aligned, 0.01), torch.tensor(0.0), "loss of perfectly matching pairs, tau=0.01")
expect_close(clip_loss(aligned, aligned, 1.0), torch.tensor(math.log(1 + math.exp(-1))),
             "loss of perfectly matching pairs, tau=1", atol=1e-4)
gen = torch.Generator().manual_seed(2)
img, txt = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
loss = clip_loss(img, txt, 0.07)
assert loss.ndim == 0, f"the loss must be a scalar (0-d tensor), got shape {tuple(loss.shape)}"
expect_close(clip_loss(txt, img, 0.07), loss, "the loss with images and captions swapped (it is symmetric)")
### BEGIN HIDDEN TESTS
for _i, (_B, _E, _tau) in enumerate([(1, 4, 0.07), (3, 5, 0.07), (8, 16, 0.5), (16, 3, 0.02), (6, 32, 2.0)]):
    _g = torch.Generator().manual_seed(100 + _i)
    _img = torch.randn(_B, _E, generator=_g) * torch.rand(_B, 1, generator=_g).add(0.2) * 5  # varied lengths
    _txt = torch.randn(_B, _E, generator=_g) * torch.rand(_B, 1, generator=_g).add(0.2) * 5
    _img[0] = _txt[0] * 3.0 + 0.1 * _img[0]  # one near-match, so the two directions differ
    expect_close(clip_loss(_img, _txt, _tau), ref_clip.clip_loss(_img, _txt, _tau),
                 f"CLIP loss for B={_B}, E={_E}, temperature {_tau}", atol=1e-4)
# Gradients reach both encoders' outputs.
_img, _txt = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
clip_loss(_img, _txt, 0.1).backward()
assert _img.grad is not None and _txt.grad is not None and _img.grad.abs().sum() > 0 and _txt.grad.abs().sum() > 0, \
    "the loss must be differentiable with respect to both embeddings"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3. Zero-shot classification (2 + 2 points)
#
# To classify without training a classifier, CLIP writes each class name into several prompt templates
# ("a handwritten {}", "the digit {}", ...), embeds the prompts with the text encoder, and combines the `P`
# prompt embeddings of each class into one **class embedding**: normalise each prompt embedding, average
# them, normalise the average (*prompt ensembling*). An image then gets the class whose embedding has the
# highest **cosine similarity** with the image embedding.
#
# **Write**
#
# - `class_embeddings(prompt_emb)`: `prompt_emb` `(K, P, E)` (K classes, P prompts each, not normalised)
#   -> `(K, E)`, each row of length 1. Normalise the prompts *before* averaging, or prompts whose
#   embeddings happen to be long outvote the others.
# - `zero_shot_classify(image_emb, class_emb)`: `image_emb` `(B, E)`, `class_emb` `(K, E)`, neither
#   necessarily normalised -> `(B,)` integer class indices (highest cosine similarity).

# %% nbgrader={"grade": false, "grade_id": "zero_shot_answer", "locked": false, "schema_version": 3, "solution": true}
def class_embeddings(prompt_emb):
    """(K, P, E) prompt embeddings -> (K, E) unit class embeddings: normalise, average over P, normalise."""
    ### BEGIN SOLUTION
    return F.normalize(F.normalize(prompt_emb, dim=-1).mean(dim=1), dim=-1)
    ### END SOLUTION


def zero_shot_classify(image_emb, class_emb):
    """(B, E) images, (K, E) classes -> (B,) index of the class with the highest cosine similarity."""
    ### BEGIN SOLUTION
    sims = F.normalize(image_emb, dim=-1) @ F.normalize(class_emb, dim=-1).T  # (B, K) cosines
    return sims.argmax(dim=-1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "class_embeddings_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# One class, two prompts of very different lengths: both count equally after normalisation.
prompts = torch.tensor([[[10.0, 0.0], [0.0, 1.0]]])  # (K=1, P=2, E=2)
expect_close(class_embeddings(prompts), torch.tensor([[1.0, 1.0]]) / math.sqrt(2),
             "class embedding of prompts [10, 0] and [0, 1]")
out = class_embeddings(torch.randn(3, 4, 5))
expect_close(out.norm(dim=-1), torch.ones(3), "lengths of the class embeddings")
### BEGIN HIDDEN TESTS
for _i, (_K, _P, _E) in enumerate([(10, 4, 8), (2, 1, 3), (5, 7, 32)]):
    _g = torch.Generator().manual_seed(200 + _i)
    _prompts = torch.randn(_K, _P, _E, generator=_g) * torch.rand(_K, _P, 1, generator=_g).add(0.1) * 10
    _expected = F.normalize(torch.stack([F.normalize(_prompts[c], dim=-1).mean(0) for c in range(_K)]), dim=-1)
    expect_close(class_embeddings(_prompts), _expected, f"class embeddings of {_K} classes x {_P} prompts")
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "zero_shot_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
images_emb = torch.tensor([[3.0, 0.5], [0.2, 0.1], [-1.0, 2.0]])
pred = zero_shot_classify(images_emb, classes)
assert pred.shape == (3,), f"one prediction per image: expected shape (3,), got {tuple(pred.shape)}"
assert pred.tolist() == [0, 0, 1], f"predictions {pred.tolist()}, expected [0, 0, 1]"
### BEGIN HIDDEN TESTS
# Class embeddings of different lengths: only the direction may count (a long class vector must not
# win by its length).
_classes = torch.tensor([[8.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
_images = torch.tensor([[0.6, 0.8], [0.3, 0.1], [-0.5, -0.6], [0.1, 1.0]])
assert zero_shot_classify(_images, _classes).tolist() == [1, 0, 2, 1], \
    "zero-shot predictions must use cosine similarity (normalise the class embeddings too)"
for _i, (_B, _K, _E) in enumerate([(1, 10, 8), (50, 7, 16), (9, 2, 3)]):
    _g = torch.Generator().manual_seed(300 + _i)
    _img = torch.randn(_B, _E, generator=_g) * torch.rand(_B, 1, generator=_g).add(0.1)
    _cls = torch.randn(_K, _E, generator=_g) * torch.rand(_K, 1, generator=_g).add(0.1) * 5
    _pred = zero_shot_classify(_img, _cls)
    assert torch.equal(_pred.long(), ref_clip.zero_shot_predict(_img, _cls)), \
        f"zero-shot predictions for {_B} images and {_K} classes differ from the reference"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4. A perceiver-resampler block (4 points)
#
# Flamingo's resampler turns any number `N` of visual features into `L` visual tokens: `L` learned latent
# vectors cross-attend to the features. Its twist: the keys and values are the features **and the latents**,
# concatenated, so the latents also see each other. One block, with pre-LayerNorm and residual connections:
#
# $$z' = \operatorname{LN}_{lat}(z), \quad kv = [\operatorname{LN}_{media}(x);\ z'], \quad
# z \leftarrow z + \operatorname{MHA}(q = z',\ k = v = kv), \quad z \leftarrow z + \operatorname{FFN}(\operatorname{LN}_{ff}(z)).$$
#
# `MHA` is multi-head attention **without masks** and **without biases**: queries `z' W_q`, keys `kv W_k`,
# values `kv W_v`, each split into `n_heads` heads of width `D / n_heads`, scaled dot-product attention per
# head, heads concatenated, then `W_o`. `FFN(h) = W_2 GELU(W_1 h)` (exact GELU, no biases).
#
# **Write** the `forward` of `ResamplerBlock` (the layers are created for you in `__init__`; use them as
# they are): `latents` `(B, L, D)`, `media` `(B, N, D)` -> new latents `(B, L, D)`. `F.scaled_dot_product_attention`
# is allowed here.

# %% nbgrader={"grade": false, "grade_id": "resampler_answer", "locked": false, "schema_version": 3, "solution": true}
class ResamplerBlock(nn.Module):
    def __init__(self, d_model, n_heads, ff_mult=4):
        super().__init__()
        self.n_heads = n_heads
        self.ln_media = nn.LayerNorm(d_model)
        self.ln_latents = nn.LayerNorm(d_model)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.ln_ff = nn.LayerNorm(d_model)
        self.ff_up = nn.Linear(d_model, ff_mult * d_model, bias=False)
        self.ff_down = nn.Linear(ff_mult * d_model, d_model, bias=False)

    def forward(self, latents, media):
        """latents (B, L, D), media (B, N, D) -> (B, L, D)."""
        ### BEGIN SOLUTION
        B, L, D = latents.shape
        H = self.n_heads
        z = self.ln_latents(latents)
        kv = torch.cat([self.ln_media(media), z], dim=1)  # (B, N + L, D): features and latents
        S = kv.shape[1]
        q = self.q_proj(z).view(B, L, H, D // H).transpose(1, 2)  # (B, H, L, D/H)
        k = self.k_proj(kv).view(B, S, H, D // H).transpose(1, 2)  # (B, H, N + L, D/H)
        v = self.v_proj(kv).view(B, S, H, D // H).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D)
        latents = latents + self.out_proj(attended)
        return latents + self.ff_down(F.gelu(self.ff_up(self.ln_ff(latents))))
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "resampler_test", "locked": true, "points": 4, "schema_version": 3, "solution": false}
def copy_reference_weights(block, reference):
    """Copy the weights of llmcourse's PerceiverBlock into your ResamplerBlock (same layers, other names)."""
    pairs = {"ln_media": reference.ln_media, "ln_latents": reference.ln_latents, "ln_ff": reference.ln_ff,
             "q_proj": reference.attn.q_proj, "k_proj": reference.attn.k_proj, "v_proj": reference.attn.v_proj,
             "out_proj": reference.attn.out_proj, "ff_up": reference.ff.up_proj, "ff_down": reference.ff.down_proj}
    with torch.no_grad():
        for name, source in pairs.items():
            for p, q in zip(getattr(block, name).parameters(), source.parameters()):
                p.copy_(q.detach() + (0.1 * torch.randn_like(q) if name.startswith("ln") else 0.0))
                q.copy_(p)  # random LayerNorm parameters, so that a swapped LayerNorm shows


torch.manual_seed(4)
reference = ref_flamingo.PerceiverBlock(d_model=16, n_heads=2)
block = ResamplerBlock(d_model=16, n_heads=2)
copy_reference_weights(block, reference)
latents, media = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
out = block(latents, media)
assert out.shape == (2, 3, 16), f"output shape {tuple(out.shape)}, expected (B, L, D) = (2, 3, 16)"
with torch.no_grad():
    expect_close(out, reference(latents, media), "ResamplerBlock vs the reference (B=2, L=3, N=5, D=16)")
### BEGIN HIDDEN TESTS
for _i, (_B, _L, _N, _D, _H) in enumerate([(1, 1, 1, 8, 1), (3, 4, 17, 32, 4), (2, 6, 2, 24, 3), (1, 8, 64, 16, 8)]):
    torch.manual_seed(400 + _i)
    _ref = ref_flamingo.PerceiverBlock(d_model=_D, n_heads=_H)
    _blk = ResamplerBlock(d_model=_D, n_heads=_H)
    copy_reference_weights(_blk, _ref)
    _lat, _med = torch.randn(_B, _L, _D), torch.randn(_B, _N, _D) * 2 + 1
    with torch.no_grad():
        expect_close(_blk(_lat, _med), _ref(_lat, _med), f"ResamplerBlock for B={_B}, L={_L}, N={_N}, D={_D}, "
                     f"{_H} heads", atol=1e-4)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 5. Retention: from the parallel form to the recurrent form (2 + 3 points)
#
# RetNet's retention is attention without the softmax, with a decay $\gamma \in (0, 1]$ per head. The
# **parallel** form (for training) multiplies the scores by a causal decay mask:
#
# $$O = (Q K^\top \odot D)\, V, \qquad D_{nm} = \gamma^{\,n - m} \text{ if } n \ge m, \text{ else } 0 .$$
#
# The **recurrent** form (for generation) keeps one state matrix $S$ of shape `(Dk, Dv)` per head:
#
# $$S_n = \gamma\, S_{n-1} + k_n^\top v_n, \qquad o_n = q_n S_n, \qquad S_{-1} = 0 .$$
#
# The decay multiplies the *old* state: the newest token enters with weight 1, a token seen `j` steps ago
# with weight $\gamma^j$.
#
# **Write**
#
# - `decay_mask(T, gamma)`: `gamma` a float -> the `(T, T)` matrix `D` above (row `n` = query position).
# - `retention_recurrent(q, k, v, gamma)`: `q`, `k` `(B, H, T, Dk)`, `v` `(B, H, T, Dv)`, `gamma` a tensor
#   `(H,)` with one decay per head. Loop over the positions; return `(output, state)` with `output`
#   `(B, H, T, Dv)` and `state` `(B, H, Dk, Dv)` the final $S$. Do not build the `T x T` matrix here.

# %% nbgrader={"grade": false, "grade_id": "retention_answer", "locked": false, "schema_version": 3, "solution": true}
def decay_mask(T, gamma):
    """(T, T) with D[n, m] = gamma ** (n - m) for n >= m, else 0."""
    ### BEGIN SOLUTION
    n = torch.arange(T)
    diff = n[:, None] - n[None, :]  # (T, T): n - m
    return torch.where(diff >= 0, float(gamma) ** diff.clamp(min=0).double(), 0.0).float()
    ### END SOLUTION


def retention_recurrent(q, k, v, gamma):
    """Recurrent retention: S = gamma * S + k_t^T v_t, o_t = q_t S. Returns (output (B, H, T, Dv), state (B, H, Dk, Dv))."""
    ### BEGIN SOLUTION
    B, H, T, Dk = q.shape
    g = gamma.view(1, H, 1, 1).to(q.dtype)
    S = torch.zeros(B, H, Dk, v.shape[-1], dtype=q.dtype)
    outputs = []
    for t in range(T):
        S = g * S + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, Dk, Dv): decay the past, add k_t^T v_t
        outputs.append(q[:, :, t, None, :] @ S)  # (B, H, 1, Dv)
    return torch.cat(outputs, dim=2), S
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "decay_mask_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
expect_close(decay_mask(3, 0.5), torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]]),
             "decay_mask(3, 0.5)")
### BEGIN HIDDEN TESTS
for _T, _gamma in [(1, 0.9), (7, 0.97), (12, 1.0), (5, 0.1)]:
    expect_close(decay_mask(_T, _gamma), ref_retention.decay_mask(_T, _gamma)[0], f"decay_mask({_T}, {_gamma})")
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "retention_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# One token: the output is (q . k) v whatever gamma is; the state is k^T v.
q1, k1, v1 = torch.ones(1, 1, 1, 2), torch.full((1, 1, 1, 2), 0.5), torch.tensor([[[[2.0, 3.0, 4.0]]]])
out, state = retention_recurrent(q1, k1, v1, torch.tensor([0.3]))
expect_close(out, torch.tensor([[[[2.0, 3.0, 4.0]]]]), "output for a single token (q . k = 1)")
expect_close(state, torch.tensor([[[[1.0, 1.5, 2.0], [1.0, 1.5, 2.0]]]]), "state after a single token (k^T v)")
# Against the parallel form, with a different decay per head.
gen = torch.Generator().manual_seed(5)
q, k, v = torch.randn(2, 3, 6, 4, generator=gen), torch.randn(2, 3, 6, 4, generator=gen), torch.randn(2, 3, 6, 5, generator=gen)
gammas = torch.tensor([0.5, 0.9, 1.0])
parallel = ref_retention.retention_parallel(q, k, v, gammas)
out, state = retention_recurrent(q, k, v, gammas)
expect_close(out, parallel.output, "recurrent output vs the parallel form (B=2, H=3, T=6)")
### BEGIN HIDDEN TESTS
expect_close(state, parallel.state, "final state vs the parallel form's (B=2, H=3, T=6)")
for _i, (_B, _H, _T, _Dk, _Dv) in enumerate([(1, 1, 1, 3, 3), (2, 4, 33, 8, 6), (3, 2, 17, 5, 9), (1, 6, 64, 4, 4)]):
    _g = torch.Generator().manual_seed(500 + _i)
    _q, _k = torch.randn(_B, _H, _T, _Dk, generator=_g), torch.randn(_B, _H, _T, _Dk, generator=_g)
    _v = torch.randn(_B, _H, _T, _Dv, generator=_g)
    _gam = 1 - 2.0 ** (-1 - torch.arange(_H, dtype=torch.float32))
    _ref = ref_retention.retention_parallel(_q, _k, _v, _gam)
    _out, _state = retention_recurrent(_q, _k, _v, _gam)
    expect_close(_out, _ref.output, f"recurrent output for B={_B}, H={_H}, T={_T}, Dk={_Dk}, Dv={_Dv}", atol=1e-4)
    expect_close(_state, _ref.state, f"final state for B={_B}, H={_H}, T={_T}, Dk={_Dk}, Dv={_Dv}", atol=1e-4)
### END HIDDEN TESTS

# %% [markdown]
# ## Putting it together (not graded)
#
# Your `clip_loss`, `class_embeddings` and `zero_shot_classify` now train and use a miniature CLIP on the
# digits (the encoders come from `llmcourse.clip`, as in the demo). After 250 steps it classifies held-out
# digits from prompts alone, far above the 10% of chance.

# %%
from llmcourse import digits
from llmcourse.train import TrainConfig, train

split = digits.load_digits_split()
tokenizer = digits.caption_tokenizer()


def pairs(split_name, generator):
    i = torch.randint(0, len(split.train_y), (64,), generator=generator)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return split.train_x[i], tokenizer.batch_encode(digits.make_captions(split.train_y[i], seed=seed), max_len=16)


def your_loss(model, batch):  # your Part 2, on the two encoders' outputs
    images, tokens = batch
    return clip_loss(model.image_encoder(images), model.text_encoder(tokens), 0.07)


seed_everything(0)
model = ref_clip.CLIP(ref_clip.CLIPConfig(vocab_size=tokenizer.vocab_size))
history = train(model, TrainConfig(steps=250, batch_size=64, lr=3e-3, weight_decay=0.05, warmup=20, min_lr=1e-4,
                                   eval_every=1000, eval_batches=1),
                pairs, loss_fn=your_loss, device="cpu", progress_bar=False, has_val=False)
loss = history.train_loss[-1]
model.eval()
templates = ref_clip.ZERO_SHOT_TEMPLATES
with torch.no_grad():
    prompts = tokenizer.batch_encode([t.format(w) for w in digits.NUMBER_WORDS for t in templates], max_len=16)
    prompt_emb = model.text_encoder(prompts).view(10, len(templates), -1)  # (K, P, E)
    predictions = zero_shot_classify(model.image_encoder(split.test_x), class_embeddings(prompt_emb))
print(f"final training loss {loss:.2f}; zero-shot accuracy on {len(split.test_y)} held-out digits: "
      f"{(predictions == split.test_y).float().mean():.1%} (chance: 10%)")

# %% [markdown]
# ## Reflection
#
# Not graded, but worth five minutes each:
#
# 1. Your patch embedding is a matrix product over `C * P * P` numbers per patch. How many multiply-adds does
#    it cost for a 224 x 224 RGB image with `P = 16` and `D = 768`, compared with one transformer layer on the
#    resulting 196 tokens?
# 2. The CLIP loss treats every other caption in the batch as a negative. With 10 classes and a batch of 64,
#    what fraction of those "negatives" actually describe the same digit? What does that do to the loss?
# 3. Why does the resampler concatenate the latents to the keys and values? What could a latent do with
#    that which it could not do otherwise?
# 4. Your recurrent retention keeps `H * Dk * Dv` numbers per sequence and layer. For which context length
#    does attention's KV cache (`2 * T * H * Dk` numbers) become larger?
