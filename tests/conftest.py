"""Shared fixtures: the real data in ../shared and tiny Hugging Face checkpoints written by
transformers itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEKIT_SHARED", ROOT.parent / "shared"))
STORIES = SHARED / "models" / "stories260K"
TINYSTORIES = SHARED / "corpora" / "tinystories_val.txt"


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    if not (STORIES / "stories260K.bin").exists():
        pytest.skip(f"real checkpoint missing: {STORIES} (see ../shared/DATA.md)")
    return STORIES


@pytest.fixture(scope="session")
def tinystories_text() -> str:
    if not TINYSTORIES.exists():
        pytest.skip(f"corpus missing: {TINYSTORIES}")
    return TINYSTORIES.read_text()


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m edgekit ARGS`` as a user would; returns the completed process."""
    e = dict(os.environ)
    e.pop("EDGEKIT_DEBUG", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                          env=e, timeout=timeout, cwd=ROOT)


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["Once upon a time there was a little girl named Lily.", "She loved to play outside.",
            "The quick brown fox jumps over the lazy dog."] * 20
    tok.train_from_iterator(text, trainer)
    return tok


def make_hf_checkpoint(path: Path, arch: str = "llama", *, vocab: int = 384, tie: bool = False,
                       seed: int = 0, **overrides) -> Path:
    """Write a random tiny HF checkpoint (config.json, model.safetensors, tokenizer.json)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    common.update(overrides)
    if arch == "llama":
        # Llama-3-style long-context RoPE scaling, so the loader's rope_parameters path is tested.
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
        cfg = transformers.LlamaConfig(rms_norm_eps=1e-5, rope_parameters=rope, **common)
        model = transformers.LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(rms_norm_eps=1e-6, rope_theta=1000000.0, **common)
        model = transformers.Qwen2ForCausalLM(cfg)
        # Random init leaves biases at zero; make them matter for the parity test.
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    else:
        raise ValueError(arch)
    with torch.no_grad():  # init std 0.02 gives near-uniform logits; widen so parity is meaningful
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    model.eval().save_pretrained(path, safe_serialization=True)
    tok = _train_tokenizer(min(vocab, 300))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return path


@pytest.fixture(scope="session")
def hf_llama(tmp_path_factory) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf_llama"), "llama")


@pytest.fixture(scope="session")
def hf_qwen2(tmp_path_factory) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf_qwen2"), "qwen2", tie=True)
