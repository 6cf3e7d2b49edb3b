"""Checkpoint loading: llama2.c legacy .bin, Hugging Face directories, edgekit checkpoints.

Never unpickles: llama2.c files are read as raw float32, HF weights through safetensors.

Example::

    lm = load_model("../shared/models/stories260K")
    lm.args.arch, lm.source.format   # ("llama2c", "llama2c")
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgekit.errors import ModelLoadError
from edgekit.models.config import ModelArgs
from edgekit.models.llama import Transformer, rope_frequencies
from edgekit.models.tokenizer import HFTokenizer, Llama2cTokenizer, Tokenizer

SUPPORTED_HF = {"llama": "llama", "qwen2": "qwen2"}
DEFAULT_MODEL_NAME = "stories260K"


@dataclass
class Source:
    """Where a model came from; ``files`` are the checkpoint files hashed into manifests."""

    path: str
    format: str  # llama2c | hf | edgekit
    files: list[str] = field(default_factory=list)

    def sha256(self) -> str:
        """One hash over the checkpoint files (name + content), stable across machines."""
        h = hashlib.sha256()
        for f in sorted(self.files):
            h.update(Path(f).name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    args: ModelArgs
    source: Source
    quant: dict | None = None  # quantization config when the checkpoint is quantized


def default_model_path() -> Path:
    """The built-in default model: ``$EDGEKIT_MODEL``, ``$EDGEKIT_MODELS/stories260K``, or
    ``shared/models/stories260K`` next to the working directory or this package's checkout."""
    if os.environ.get("EDGEKIT_MODEL"):
        return Path(os.environ["EDGEKIT_MODEL"])
    if os.environ.get("EDGEKIT_MODELS"):
        return Path(os.environ["EDGEKIT_MODELS"]) / DEFAULT_MODEL_NAME
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for d in [start, *start.parents]:
            for cand in (d / "shared" / "models" / DEFAULT_MODEL_NAME,):
                if cand.is_dir():
                    return cand
    raise ModelLoadError("no default model found (looked for shared/models/stories260K above the "
                         "working directory)", "pass a model path, or set EDGEKIT_MODELS=DIR")


def load_model(path: str | Path | None = None, *, max_seq_len: int | None = None,
               tokenizer_path: str | Path | None = None, max_batch: int = 1) -> LoadedModel:
    """Load any supported checkpoint; the format is detected from what is at ``path``.

    Raises ``ModelLoadError`` (a user error with a hint) for a missing, truncated or corrupt
    checkpoint and for unsupported architectures.
    """
    p = Path(path) if path is not None else default_model_path()
    if not p.exists():
        raise ModelLoadError(f"model path {p} does not exist",
                             "pass a llama2.c .bin, a Hugging Face directory or an edgekit checkpoint")
    if p.is_dir():
        if (p / "edgekit_checkpoint.json").exists():
            from edgekit.quant.checkpoint import load_quantized

            return load_quantized(p, max_seq_len=max_seq_len, max_batch=max_batch)
        if (p / "config.json").exists():
            return load_hf(p, max_seq_len=max_seq_len, max_batch=max_batch)
        bins = sorted(x for x in p.glob("*.bin") if not x.name.startswith("tok"))
        if len(bins) == 1:
            return load_llama2c(bins[0], tokenizer_path, max_seq_len=max_seq_len, max_batch=max_batch)
        raise ModelLoadError(f"{p} has no config.json and no single llama2.c .bin",
                             "point at a Hugging Face checkpoint directory (with config.json) "
                             "or at a llama2.c .bin file")
    if p.suffix == ".safetensors":
        raise ModelLoadError(f"{p} is a bare weights file",
                             "pass the directory holding it and its config.json")
    return load_llama2c(p, tokenizer_path, max_seq_len=max_seq_len, max_batch=max_batch)


# --- llama2.c ---------------------------------------------------------------------------------

def _find_llama2c_tokenizer(ckpt: Path, explicit: str | Path | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    cands = sorted(ckpt.parent.glob("tok*.bin"))
    if not cands:
        raise ModelLoadError(f"no tokenizer next to {ckpt}",
                             "put the llama2.c tokenizer (tok*.bin) beside it or pass --tokenizer")
    return cands[0]


def load_llama2c(path: Path, tokenizer_path: str | Path | None = None, *,
                 max_seq_len: int | None = None, max_batch: int = 1) -> LoadedModel:
    """Read a llama2.c legacy checkpoint (7 int32 header, then fp32 tensors; see DATA.md)."""
    size = path.stat().st_size
    if size < 28:
        raise ModelLoadError(f"{path} is too small to be a llama2.c checkpoint ({size} bytes)",
                             "re-copy the checkpoint; it looks truncated")
    header = np.fromfile(path, dtype="<i4", count=7)
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = (int(x) for x in header)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq) <= 0 or dim % n_heads or n_heads % n_kv:
        raise ModelLoadError(f"{path} has an invalid llama2.c header {header.tolist()}",
                             "this is not a llama2.c legacy checkpoint")
    hd = dim // n_heads
    kv_dim = n_kv * hd
    shapes = [
        ("tok", (vocab, dim)), ("rms_att", (n_layers, dim)), ("wq", (n_layers, dim, dim)),
        ("wk", (n_layers, kv_dim, dim)), ("wv", (n_layers, kv_dim, dim)), ("wo", (n_layers, dim, dim)),
        ("rms_ffn", (n_layers, dim)), ("w1", (n_layers, hidden, dim)), ("w2", (n_layers, dim, hidden)),
        ("w3", (n_layers, hidden, dim)), ("rms_final", (dim,)), ("freq_re", (seq, hd // 2)),
        ("freq_im", (seq, hd // 2)),
    ]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    expected = 28 + 4 * sum(int(np.prod(s)) for _, s in shapes)
    if size != expected:
        raise ModelLoadError(f"{path} is {size} bytes but its header implies {expected}",
                             "the checkpoint is truncated or corrupt; re-copy it")
    flat = np.fromfile(path, dtype="<f4", offset=28)
    t: dict[str, torch.Tensor] = {}
    off = 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        t[name] = torch.from_numpy(flat[off:off + n].reshape(shape).copy())
        off += n
    if not all(torch.isfinite(v).all() for v in t.values()):
        raise ModelLoadError(f"{path} holds non-finite weights", "the checkpoint is corrupt; re-copy it")
    args = ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, hidden_dim=hidden,
                     vocab_size=vocab, max_seq_len=max_seq_len or seq, rope_interleaved=True,
                     tie_embeddings=shared, arch="llama2c", bos_id=1, eos_ids=[2])
    sd = {"tok_embeddings.weight": t["tok"], "norm.weight": t["rms_final"]}
    if not shared:
        sd["output.weight"] = t["wcls"]
    for i in range(n_layers):
        pre = f"layers.{i}."
        sd[pre + "attention_norm.weight"] = t["rms_att"][i]
        sd[pre + "ffn_norm.weight"] = t["rms_ffn"][i]
        for ours, theirs in (("attention.wq", "wq"), ("attention.wk", "wk"), ("attention.wv", "wv"),
                             ("attention.wo", "wo"), ("feed_forward.w1", "w1"),
                             ("feed_forward.w2", "w2"), ("feed_forward.w3", "w3")):
            sd[f"{pre}{ours}.weight"] = t[theirs][i]
    model = build_model(args, sd, max_batch)
    tok_path = _find_llama2c_tokenizer(path, tokenizer_path)
    tok = Llama2cTokenizer.from_file(tok_path, vocab)
    src = Source(str(path), "llama2c", [str(path), str(tok_path)])
    return LoadedModel(model, tok, args, src)


def build_model(args: ModelArgs, state_dict: dict[str, torch.Tensor], max_batch: int = 1) -> Transformer:
    """Instantiate the reference model and load weights strictly (tied heads may be absent)."""
    with torch.device("meta"):
        model = Transformer(args, max_batch)
    # Skips random init of weights that are about to be overwritten; buffers (RoPE tables,
    # KV cache) are not in state dicts, so they are rebuilt on the CPU.
    model = model.to_empty(device="cpu")
    _init_buffers(model, args)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if args.tie_embeddings:
        missing = [m for m in missing if m != "output.weight"]
        model.output.weight = model.tok_embeddings.weight
    if missing or unexpected:
        raise ModelLoadError(f"checkpoint does not match the {args.arch} layout "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                             "the checkpoint may be of an unsupported variant")
    return model.eval()


def _init_buffers(model: Transformer, args: ModelArgs) -> None:
    angles = torch.outer(torch.arange(args.max_seq_len, dtype=torch.float64), rope_frequencies(args))
    model.rope_cos = angles.cos().float()
    model.rope_sin = angles.sin().float()
    model.slots = torch.arange(args.max_seq_len)
    for layer in model.layers:
        c = layer.attention.kv_cache
        c.k_cache = torch.zeros_like(c.k_cache)
        c.v_cache = torch.zeros_like(c.v_cache)


# --- Hugging Face ------------------------------------------------------------------------------

def _read_safetensors(d: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = d / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError):
            raise ModelLoadError(f"{index} is not a valid shard index",
                                 "re-save the checkpoint with save_pretrained") from None
        files = [d / n for n in names]
    else:
        files = sorted(d.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{d} has no *.safetensors weights",
                             "save the model with save_pretrained(safe_serialization=True); "
                             "pickled .bin weights are refused")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.exists():
            raise ModelLoadError(f"shard {f.name} listed in the index is missing", "re-copy the checkpoint")
        try:
            sd.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"{f} is not a valid safetensors file ({str(e).splitlines()[0]})",
                                 "the file is corrupt or truncated; re-copy it") from None
    return sd, [str(f) for f in files]


def hf_args(cfg: dict, max_seq_len: int | None) -> ModelArgs:
    """ModelArgs from an HF config.json dict; raises for unsupported architectures."""
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_HF:
        raise ModelLoadError(f"unsupported architecture model_type={mt!r}",
                             f"edgekit loads {', '.join(sorted(SUPPORTED_HF))} checkpoints")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"unsupported activation {cfg['hidden_act']!r}", "only SwiGLU (silu) models load")
    arch = SUPPORTED_HF[mt]
    name = " ".join(cfg.get("architectures") or []) + str(cfg.get("_name_or_path", ""))
    if arch == "llama" and "smollm" in name.lower():
        arch = "smollm"
    n_heads = cfg["num_attention_heads"]
    eos = cfg.get("eos_token_id")
    # transformers >= 5 writes rope settings under rope_parameters; 4.x at the top level.
    rp = dict(cfg.get("rope_parameters") or {})
    theta = rp.pop("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or (rp if rp.get("rope_type", "default") != "default" else None)
    if cfg.get("use_sliding_window"):
        raise ModelLoadError("sliding-window attention is not supported",
                             "set use_sliding_window false (Qwen2 checkpoints ship it off)")
    return ModelArgs(
        dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads, hidden_dim=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        max_seq_len=max_seq_len or min(cfg.get("max_position_embeddings", 2048), 4096),
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
        norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
        rope_interleaved=False, rope_scaling=scaling,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=(mt == "qwen2") or bool(cfg.get("attention_bias", False)),
        arch=arch, bos_id=cfg.get("bos_token_id"),
        eos_ids=eos if isinstance(eos, list) else ([eos] if eos is not None else []),
    )


HF_NAMES = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}


def hf_to_edgekit(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF Llama/Qwen2 weights to edgekit's names (HF RoPE layout kept: half-split)."""
    out = {}
    for k, v in sd.items():
        v = v.float()
        if k == "model.embed_tokens.weight":
            out["tok_embeddings.weight"] = v
        elif k == "model.norm.weight":
            out["norm.weight"] = v
        elif k == "lm_head.weight":
            out["output.weight"] = v
        elif k.startswith("model.layers."):
            _, _, i, rest = k.split(".", 3)
            mod, _, leaf = rest.rpartition(".")
            if mod not in HF_NAMES:
                out[k] = v  # reported as unexpected by build_model
                continue
            out[f"layers.{i}.{HF_NAMES[mod]}.{leaf}"] = v
        elif "rotary_emb" not in k:
            out[k] = v
    return out


def load_hf(d: Path, *, max_seq_len: int | None = None, max_batch: int = 1) -> LoadedModel:
    try:
        cfg = json.loads((d / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{d / 'config.json'} is not valid JSON ({e.msg})", "re-copy the checkpoint") from None
    args = hf_args(cfg, max_seq_len)
    if not (d / "tokenizer.json").exists():
        raise ModelLoadError(f"{d} has no tokenizer.json", "save the tokenizer with the model (save_pretrained)")
    sd, files = _read_safetensors(d)
    model = build_model(args, hf_to_edgekit(sd), max_batch)
    tok = HFTokenizer.from_dir(d, cfg)
    if args.bos_id is None and tok.bos_id is not None:
        args.bos_id = tok.bos_id
    if not args.eos_ids:
        args.eos_ids = list(tok.eos_ids)
    src = Source(str(d), "hf", files + [str(d / "config.json"), str(d / "tokenizer.json")])
    return LoadedModel(model, tok, args, src)
