"""Quantized checkpoints: a directory with ``model.safetensors`` (packed + float tensors),
``edgekit_checkpoint.json`` and the tokenizer file(s).

``edgekit_checkpoint.json``::

    {"schema": "edgekit.checkpoint", "schema_version": 1,
     "model_args": {...ModelArgs...}, "quant": {...QuantConfig...},
     "quantized_modules": ["layers.0.attention.wq", ...], "head": "tied" | "float" | "packed",
     "source": {"path": ..., "format": ..., "sha256": ...},
     "tokenizer": {"kind": "llama2c" | "hf", "files": [...], "bos_id": .., "eos_ids": [..]}}

Written atomically: everything goes to a temporary sibling directory that is renamed into place.

Example::

    save_quantized(lm, cfg, "out/stories-w2g64")
    lm2 = load_quantized("out/stories-w2g64")        # also what load_model() dispatches to
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from edgekit.errors import ModelLoadError, UserError
from edgekit.models.config import ModelArgs
from edgekit.models.load import LoadedModel, Source, _init_buffers
from edgekit.models.llama import Transformer
from edgekit.models.tokenizer import HFTokenizer, Llama2cTokenizer
from edgekit.quant.api import prepare_skeleton, quantized_module_names
from edgekit.quant.config import QuantConfig
from edgekit.quant.modules import PackedEmbedding, _PackedLinear, set_act_bits

SCHEMA = "edgekit.checkpoint"
SCHEMA_VERSION = 1
META = "edgekit_checkpoint.json"
WEIGHTS = "model.safetensors"


def _tokenizer_files(lm: LoadedModel) -> tuple[str, list[Path]]:
    tok = lm.tokenizer
    if isinstance(tok, Llama2cTokenizer):
        srcs = [Path(f) for f in lm.source.files if Path(f).name.startswith("tok") and f.endswith(".bin")]
        return "llama2c", srcs
    if isinstance(tok, HFTokenizer):
        d = tok.path.parent
        return "hf", [p for p in (d / "tokenizer.json", d / "tokenizer_config.json") if p.exists()]
    raise UserError(f"cannot save tokenizer of type {type(tok).__name__}", "use a llama2.c or HF checkpoint")


def save_quantized(lm: LoadedModel, config: QuantConfig, out: str | Path, *, force: bool = False) -> Path:
    """Write ``lm`` (whose model ``quantize_`` has already processed) as a checkpoint at ``out``.

    Raises UserError if ``out`` exists and ``force`` is False, or if the model is not quantized.
    """
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"output {out} already exists", "pass --force to overwrite it or choose another --out")
    model = lm.model
    packed = [n for n, m in model.named_modules() if isinstance(m, (_PackedLinear, PackedEmbedding))]
    if not packed:
        raise UserError("the model has no quantized modules", "run quantize_ on it first")
    tied = model.output.weight is model.tok_embeddings.weight if hasattr(model.output, "weight") else False
    head = "packed" if isinstance(model.output, _PackedLinear) else ("tied" if tied else "float")
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if head == "tied":
        sd.pop("output.weight", None)
    kind, tok_files = _tokenizer_files(lm)
    meta = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "model_args": lm.args.to_dict(), "quant": config.to_dict(),
        "quantized_modules": [n for n in packed if n != "tok_embeddings"], "head": head,
        "source": {"path": lm.source.path, "format": lm.source.format, "sha256": lm.source.sha256()},
        "tokenizer": {"kind": kind, "files": [p.name for p in tok_files], "bos_id": lm.tokenizer.bos_id,
                      "eos_ids": list(lm.tokenizer.eos_ids)},
    }
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(sd, str(tmp / WEIGHTS), metadata={"format": "pt", "schema": SCHEMA})
        for p in tok_files:
            shutil.copyfile(p, tmp / p.name)
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_meta(path: str | Path) -> dict:
    """The parsed ``edgekit_checkpoint.json`` of a checkpoint directory (validated schema)."""
    p = Path(path) / META
    try:
        meta = json.loads(p.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{p} is missing", "this is not an edgekit quantized checkpoint") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{p} is not valid JSON ({e.msg})", "re-run edgekit quantize") from None
    if meta.get("schema") != SCHEMA or meta.get("schema_version") != SCHEMA_VERSION:
        raise ModelLoadError(f"{p} has schema {meta.get('schema')!r} v{meta.get('schema_version')}",
                             f"this edgekit reads {SCHEMA} v{SCHEMA_VERSION}; re-run edgekit quantize")
    return meta


def load_quantized(path: str | Path, max_seq_len: int | None = None, max_batch: int = 1) -> LoadedModel:
    """Load a checkpoint written by ``save_quantized``; ``LoadedModel.quant`` holds the config dict.

    Raises ModelLoadError for missing/corrupt files or a state dict that does not match.
    """
    d = Path(path)
    meta = read_meta(d)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        sd = load_file(str(d / WEIGHTS))
    except (SafetensorError, OSError, FileNotFoundError) as e:
        raise ModelLoadError(f"cannot read {d / WEIGHTS} ({str(e).splitlines()[0]})",
                             "the checkpoint is corrupt or truncated; re-run edgekit quantize") from None
    args = ModelArgs.from_dict(meta["model_args"])
    if max_seq_len:
        args.max_seq_len = max_seq_len
    cfg = QuantConfig.from_dict(meta["quant"])
    with torch.device("meta"):
        model = Transformer(args, max_batch)
    if meta["head"] != "tied" and model.output.weight is model.tok_embeddings.weight:
        with torch.device("meta"):
            model.output.weight = torch.nn.Parameter(torch.empty_like(model.output.weight))
    prepare_skeleton(model, cfg, list(meta["quantized_modules"]))
    model = model.to_empty(device="cpu")
    _init_buffers(model, args)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if meta["head"] == "tied":
        missing = [m for m in missing if m != "output.weight"]
        model.output.weight = model.tok_embeddings.weight
    if missing or unexpected:
        raise ModelLoadError(f"{d / WEIGHTS} does not match its config (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})", "the checkpoint is corrupt; re-run edgekit quantize")
    set_act_bits(model, cfg.act_bits)
    tk = meta["tokenizer"]
    files = [d / f for f in tk["files"]]
    for f in files:
        if not f.exists():
            raise ModelLoadError(f"tokenizer file {f} is missing", "re-run edgekit quantize")
    if tk["kind"] == "llama2c":
        tok = Llama2cTokenizer.from_file(files[0], args.vocab_size)
    else:
        tok = HFTokenizer.from_dir(d, {"bos_token_id": tk.get("bos_id"), "eos_token_id": tk.get("eos_ids")})
    src = Source(str(d), "edgekit", [str(d / WEIGHTS), str(d / META)] + [str(f) for f in files])
    return LoadedModel(model.eval(), tok, args, src, quant=cfg.to_dict())


__all__ = ["save_quantized", "load_quantized", "read_meta", "quantized_module_names"]
