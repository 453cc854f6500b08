"""``make gpu-check``: the course's GPU path, in one script that needs no Jupyter.

On a CUDA machine it

1. runs the package tests on CUDA (``pytest tests -m "not slow"``: the CUDA-parametrised cases run);
2. prints a benchmark table (Markdown, ready for ``modules/03_deployment/README.md``):
   - Triton FlashAttention-2 forward vs ``torch.nn.functional.scaled_dot_product_attention``: bf16 and
     fp16, causal and not, T = 1k / 4k / 16k, head dim 64, TFLOP/s and ratio (goal: >= 0.9x at T = 4096);
   - tiled PyTorch attention vs naive attention: peak memory (CUDA allocator) and time;
   - a LoRA training step (``llmcourse.lora``) vs the same step with peft;
   - a mixture-of-experts layer (8 experts, top-1) vs one dense FFN as wide as one expert;
   - KV-cache decoding: per-token latency at token 32 and 512, with and without the cache;
3. runs every demo notebook's ``.py`` as a plain script on CUDA and reports each one's time.

Without CUDA it says so, runs the CPU smoke test (the Triton kernel through Triton's interpreter and
every benchmark on tiny shapes, to prove the script works) and exits 0.

    python scripts/gpu_check.py                 # everything (CUDA), or the smoke test (no CUDA)
    python scripts/gpu_check.py --smoke         # the tiny CPU version, even on a GPU machine
    python scripts/gpu_check.py --skip-tests --skip-demos --out gpu.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

try:  # a GPU box may have the course's dependencies but not llmcourse installed: use the checkout
    import llmcourse  # noqa: F401 - imported only to see whether it is installed
except ImportError:  # pragma: no cover - depends on the machine
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "shared"))

from llmcourse import flash
from llmcourse import kv_cache as kc
from llmcourse.transformer import GPT, FeedForward, GPTConfig
from llmcourse.utils import benchmark, seed_everything

ROOT = Path(__file__).resolve().parent.parent

ATTENTION_GOAL = 0.9  # Triton forward / SDPA throughput at T=4096, d=64, bf16 (issue 4)
KV_GOAL = 1.5  # cached decode latency at token 512 / at token 32
MOE_GOAL = 1.5  # MoE layer time / dense expert-sized FFN time


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _safe(name: str, fn: Callable[[], str]) -> str:
    """Run one benchmark section; a failure is reported in its place and does not stop the others."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the report must go on
        return f"{name}: FAILED ({type(exc).__name__}: {str(exc)[:300]})"


# ----------------------------------------------------------------------------------------------------
# Benchmarks (each returns a Markdown section)
# ----------------------------------------------------------------------------------------------------
def attention_section(device: torch.device, smoke: bool) -> str:
    """Triton FlashAttention-2 forward vs SDPA: TFLOP/s and ratio, plus the largest difference."""
    if smoke:
        configs = [(torch.float16, causal, T) for causal in (False, True) for T in (40, 64)]
        heads, tokens, repeat = 2, 64, 1
    else:
        configs = [(dtype, causal, T) for dtype in (torch.bfloat16, torch.float16) for causal in (False, True)
                   for T in (1024, 4096, 16_384)]
        heads, tokens, repeat = 16, 16_384, 20  # batch * T = 16k tokens, 16 heads of 64 (width 1024)
    rows, verdicts = [], []
    for dtype, causal, T in configs:
        B = max(1, tokens // T)
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(B, heads, T, 64, generator=g).to(device, dtype) for _ in range(3))
        out = flash.flash_attention_triton(q, k, v, causal=causal)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        err = (out.float() - ref.float()).abs().max().item()
        t_triton = benchmark(flash.flash_attention_triton, q, k, v, causal, warmup=0 if smoke else 5, repeat=repeat)
        t_sdpa = benchmark(F.scaled_dot_product_attention, q, k, v, is_causal=causal,
                           warmup=0 if smoke else 5, repeat=repeat)
        flops = flash.attention_flops(B, heads, T, D=64, causal=causal)
        ratio = t_sdpa / t_triton  # throughput ratio Triton / SDPA
        rows.append([str(dtype).removeprefix("torch."), "causal" if causal else "full", T, B,
                     f"{flops / t_triton / 1e12:.1f}", f"{flops / t_sdpa / 1e12:.1f}", f"{ratio:.2f}x", f"{err:.1e}"])
        if T == 4096 and dtype == torch.bfloat16:
            verdicts.append(f"bf16 {'causal' if causal else 'full'} T=4096: {ratio:.2f}x SDPA "
                            f"({'ok' if ratio >= ATTENTION_GOAL else 'BELOW GOAL'} {ATTENTION_GOAL}x)")
    title = "Triton FlashAttention-2 forward vs SDPA (head dim 64, 16 heads, batch x T = 16k tokens)"
    if smoke:
        title = "Triton attention vs SDPA (smoke: interpreter, tiny shapes; TFLOP/s meaningless here)"
    body = markdown_table(["dtype", "mask", "T", "batch", "Triton TFLOP/s", "SDPA TFLOP/s", "Triton / SDPA",
                           "max abs diff"], rows)
    return f"### {title}\n\n{body}\n" + "".join(f"\n- {v}" for v in verdicts) + ("\n" if verdicts else "")


def memory_section(device: torch.device, smoke: bool) -> str:
    """Tiled PyTorch attention vs naive attention: peak memory and time, causal, 8 heads of 64."""
    lengths = (128, 256) if smoke else (1024, 4096, 16_384)
    heads = 2 if smoke else 8
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    rows = []
    for T in lengths:
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(1, heads, T, 64, generator=g).to(device, dtype) for _ in range(3))
        naive = flash.peak_memory_bytes(flash.naive_attention, q, k, v, True).peak
        tiled = flash.peak_memory_bytes(flash.tiled_attention, q, k, v, True, None, 128, 128).peak
        t_naive = benchmark(flash.naive_attention, q, k, v, True, warmup=1, repeat=3)
        t_tiled = benchmark(flash.tiled_attention, q, k, v, True, None, 128, 128, warmup=1, repeat=3)
        rows.append([T, f"{naive / 2**20:.1f} MiB", f"{tiled / 2**20:.1f} MiB", f"{naive / tiled:.1f}x",
                     _ms(t_naive), _ms(t_tiled)])
    body = markdown_table(["T", "naive peak", "tiled peak", "memory saved", "naive time", "tiled time"], rows)
    return f"### Tiled PyTorch attention vs naive attention (causal, {heads} heads of 64, {dtype})\n\n{body}\n"


def lora_section(device: torch.device, smoke: bool) -> str:
    """One training step of a Llama-style model with our LoRA layers vs peft's (same rank and targets)."""
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmcourse.lora import LoRAConfig, inject_lora

    width, layers, batch, T = (64, 2, 2, 16) if smoke else (1024, 8, 8, 512)
    config = LlamaConfig(vocab_size=1000 if smoke else 32000, hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
                         num_key_value_heads=max(1, width // 256), max_position_embeddings=max(T, 64))

    def make(kind: str):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(device)
        if kind == "ours":
            inject_lora(model, LoRAConfig(r=16, alpha=32, target_modules=("q_proj", "v_proj")))
        else:
            model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    ids = torch.randint(config.vocab_size, (batch, T), generator=torch.Generator().manual_seed(0)).to(device)
    rows, times = [], {}
    for kind in ("ours", "peft"):
        model, opt = make(kind)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        times[kind] = benchmark(step, warmup=1 if smoke else 3, repeat=2 if smoke else 10)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(["llmcourse.lora" if kind == "ours" else f"peft {peft.__version__}", f"{trainable:,}",
                     _ms(times[kind])])
    rows.append(["ratio ours / peft", "", f"{times['ours'] / times['peft']:.2f}x"])
    title = f"LoRA training step, Llama-style {layers} layers x {width}, batch {batch} x {T}, r=16 on q/v"
    return f"### {title}\n\n{markdown_table(['implementation', 'trainable', 'step time'], rows)}\n"


def moe_section(device: torch.device, smoke: bool) -> str:
    """A mixture-of-experts layer (8 experts, top-1) vs one dense FFN of an expert's width."""
    from llmcourse.moe import MoEConfig, MoEFeedForward

    C, N = (32, 256) if smoke else (1024, 4096)
    x = torch.randn(N, C, generator=torch.Generator().manual_seed(0)).to(device)
    dense = FeedForward(C, 4 * C).to(device)
    moe = MoEFeedForward(MoEConfig(C, 4 * C, 8, 1, 1.25)).to(device)
    with torch.no_grad():
        t_dense = benchmark(dense, x, warmup=1 if smoke else 5, repeat=3 if smoke else 20)
        t_moe = benchmark(moe, x, warmup=1 if smoke else 5, repeat=3 if smoke else 20)
    ratio = t_moe / t_dense
    rows = [["dense FFN", _ms(t_dense), "1.00x"], ["MoE, 8 experts, top-1", _ms(t_moe), f"{ratio:.2f}x"]]
    verdict = f"- MoE / dense: {ratio:.2f}x ({'ok' if ratio <= MOE_GOAL else 'OVER GOAL'} {MOE_GOAL}x)"
    if smoke:
        verdict = "- smoke shapes: the goal applies at full size on a GPU"
    return (f"### MoE layer vs dense FFN ({N} tokens, d_model {C}, d_ff {4 * C})\n\n"
            f"{markdown_table(['layer', 'forward', 'ratio'], rows)}\n\n{verdict}\n")


def kv_section(device: torch.device, smoke: bool) -> str:
    """Per-token decode latency with and without the KV cache at token 32 and 512."""
    seed_everything(0)
    positions = [8, 32] if smoke else [32, 512]
    width, layers = (64, 2) if smoke else (1024, 8)
    model = GPT(GPTConfig(vocab_size=1000, block_size=1024, n_layer=layers, n_head=max(2, width // 64),
                          n_kv_heads=max(1, width // 256), d_model=width)).to(device).eval()
    cached = kc.per_token_latency(model, positions, use_cache=True, repeat=2 if smoke else 5)
    plain = kc.per_token_latency(model, positions, use_cache=False, repeat=2 if smoke else 5)
    rows = [[p, _ms(a), _ms(b)] for p, a, b in zip(positions, cached.seconds, plain.seconds)]
    ratio = cached.seconds[-1] / cached.seconds[0]
    rows.append([f"ratio {positions[-1]} / {positions[0]}", f"{ratio:.2f}x", f"{plain.seconds[-1] / plain.seconds[0]:.2f}x"])
    verdict = f"- with the cache: {ratio:.2f}x ({'ok' if ratio <= KV_GOAL else 'OVER GOAL'} {KV_GOAL}x)"
    if smoke:
        verdict = "- smoke shapes: the goal applies at full size"
    return (f"### KV-cache decoding, GPT {layers} layers x {width} (GQA), per-token latency\n\n"
            f"{markdown_table(['token', 'with cache', 'without cache'], rows)}\n\n{verdict}\n")


# ----------------------------------------------------------------------------------------------------
# Tests and demos
# ----------------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg", LLMCOURSE_NO_PROGRESS="1",
               PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore::DeprecationWarning")
    env["PYTHONPATH"] = str(ROOT / "shared") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_tests() -> str:
    """The package tests on this machine (CUDA cases enabled because CUDA is available)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests", "-m", "not slow", "-q", "-p", "no:cacheprovider",
                           "-o", "addopts=", "--tb=line"], cwd=ROOT, env=_env(), capture_output=True, text=True)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    failures = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")][:20]
    status = "ok" if proc.returncode == 0 else "FAILED"
    lines = [f"### Package tests on CUDA: {status}", "", f"`pytest tests -m \"not slow\"`: {summary} "
             f"({time.perf_counter() - start:.0f} s)"]
    return "\n".join(lines + [""] + [f"- {f}" for f in failures]) + "\n"


def run_demos(limit_s: float = 900) -> str:
    """Every demo's .py as a plain script (cwd = its folder), timed."""
    rows = []
    for py in sorted((ROOT / "modules").glob("*/[0-9]*.py")):
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, py.name], cwd=py.parent, env=_env(), capture_output=True,
                                  text=True, timeout=limit_s)
            status = "ok" if proc.returncode == 0 else "FAILED: " + (proc.stderr or proc.stdout).strip()[-160:].replace("\n", " ")
        except subprocess.TimeoutExpired:
            status = f"TIMEOUT after {limit_s:.0f} s"
        rows.append([str(py.relative_to(ROOT)), f"{time.perf_counter() - start:.1f} s", status.replace("|", "/")])
    return f"### Demos run as scripts on CUDA\n\n{markdown_table(['demo', 'time', 'status'], rows)}\n"


def header(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    return (f"## GPU check: {name}, {datetime.date.today().isoformat()}\n\n"
            f"torch {torch.__version__}, Python {platform.python_version()}, {platform.node()}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (Triton interpreter)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-demos", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    args = parser.parse_args(argv)

    smoke = args.smoke or not torch.cuda.is_available()
    if not torch.cuda.is_available():
        print("No CUDA device on this machine: the GPU check needs one. Running the CPU smoke test instead "
              "(the Triton kernel through Triton's interpreter, every benchmark on tiny shapes).\n", flush=True)
    device = torch.device("cpu") if smoke else torch.device("cuda")
    sections = [header(device)]
    print(sections[0], flush=True)
    if not smoke and not args.skip_tests:
        sections.append(_safe("tests", run_tests))
        print(sections[-1], flush=True)
    benches = [("attention", attention_section), ("memory", memory_section), ("lora", lora_section),
               ("moe", moe_section), ("kv cache", kv_section)]
    for name, fn in benches:
        sections.append(_safe(name, lambda fn=fn: fn(device, smoke)))
        print(sections[-1], flush=True)
    if not smoke and not args.skip_demos:
        sections.append(_safe("demos", run_demos))
        print(sections[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(sections))
        print(f"report written to {args.out}")
    if smoke:
        print("smoke test done (no CUDA: figures above are not GPU measurements)")
    failed = [s.splitlines()[0] for s in sections if "FAILED" in s or "TIMEOUT" in s]
    if failed:
        print("failed:", "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
