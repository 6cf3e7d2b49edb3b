"""The staged package builder: load -> transform -> export -> lower -> serialize -> verify.

Each stage is timed and logged (``log`` callback, stderr in the CLI); the package is built in a
temp directory next to ``out`` and renamed into place only after it verified, so an interrupted
or failed export leaves nothing at ``out``.

Example::

    manifest = export_package("../shared/models/stories260K", "out/stories", formats=("executorch", "onnx"))
    manifest["programs"]["executorch"]["delegated_nodes"]
"""

from __future__ import annotations

import dataclasses
import platform
import struct
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from edgekit import __version__
from edgekit.errors import InternalError, UserError
from edgekit.export.package import (EDGEKIT_ABI, PTE_FILE, SCHEMA_VERSION, atomic_dir,
                                    write_manifest)

FORMATS = ("executorch", "onnx")
GOLDEN_PROMPT = "Once upon a time"
GOLDEN_NEW_TOKENS = 16
# Tolerances the verifier applies to exported fp32 programs (absolute, on logits).
FP32_TOL = {"top5_abs": 1e-3, "source_max_abs": 1e-3}
# int8-activation packages (QuantConfig.act_bits = 8): x is rounded to int8 per group inside every
# linear, so a 1e-7 difference upstream (XNNPACK's summation order) can flip one rounding and move
# that output by a whole activation step. Logits are then compared at 5% of the golden top-5
# magnitude; argmax and the greedy tokens stay exact checks for ExecuTorch (same integer math as
# the eager model), except at a near-tie: a prompt position or greedy step where the eager top-1
# and top-2 logits differ by less than that tolerance (golden "argmax_margins", "greedy_margins").
# onnxruntime's MatMulNBits quantizes activations its own way (accuracy_level 4), so its program
# is "approximate": per-position argmax agreement >= 60%, logits within 20% of the top-5
# magnitude and the first quarter of the greedy tokens equal (edgekit/export/verify.py).
A8_REL_TOL = 0.05

# A quantization hook: called on the float model in the transform stage; it may modify the
# model in place and returns the config recorded as manifest["quantization"] (None = float).
QuantHook = Callable[[torch.nn.Module], "dict[str, Any] | None"]


def parse_formats(fmt: str | Iterable[str]) -> tuple[str, ...]:
    """``"both"`` -> both formats; raises ``UserError`` for unknown names."""
    items = [fmt] if isinstance(fmt, str) else list(fmt)
    out: list[str] = []
    for f in items:
        for x in (FORMATS if f == "both" else (f,)):
            if x not in FORMATS:
                raise UserError(f"unknown export format {x!r}", "use executorch, onnx or both")
            if x not in out:
                out.append(x)
    return tuple(out)


class Stages:
    """Times named stages; ``with stages("lower"):`` logs ``[stage] lower 1.23 s``."""

    def __init__(self, log: Callable[[str], None] | None, advance: Callable[[int], None] | None) -> None:
        self.log = log or (lambda s: None)
        self.advance = advance or (lambda n=1: None)
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        self.log(f"[stage] {name} ...")
        yield
        dt = time.perf_counter() - t0
        self.times[name] = round(dt, 3)
        self.log(f"[stage] {name} done in {dt:.2f} s")
        self.advance(1)


def n_stages(formats: tuple[str, ...]) -> int:
    """How many stages ``export_package`` runs (for a progress bar's total)."""
    per = {"executorch": 3, "onnx": 3}
    return 4 + sum(per[f] for f in formats) + 1  # load, transform, golden, write, ..., verify


def write_llama2c_tokenizer(tok, path: Path) -> None:
    """Serialize a Llama2cTokenizer in llama2.c's format (max_len, then score/len/bytes)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in tok.pieces)))
        for p, s in zip(tok.pieces, tok.scores):
            f.write(struct.pack("<fi", s, len(p)))
            f.write(p)


def save_tokenizer(tok, d: Path) -> dict[str, Any]:
    """Write the tokenizer into the package; returns the manifest's tokenizer entry."""
    info: dict[str, Any] = {"kind": tok.kind, "bos_id": tok.bos_id, "eos_ids": list(tok.eos_ids),
                            "vocab_size": tok.vocab_size}
    if tok.kind == "llama2c":
        info["file"] = "tokenizer.bin"
        write_llama2c_tokenizer(tok, d / info["file"])
    elif tok.kind == "hf":
        info["file"] = "tokenizer.json"
        tok.tok.save(str(d / info["file"]))
        info["add_bos"] = bool(tok.add_bos)
    else:
        raise UserError(f"cannot package a tokenizer of kind {tok.kind!r}", "use a llama2.c or HF tokenizer")
    return info


def golden(model: torch.nn.Module, tokenizer, prompt: str = GOLDEN_PROMPT,
           n_new: int = GOLDEN_NEW_TOKENS) -> dict[str, Any]:
    """Eager reference outputs for a short prompt, stored in the manifest for later checks.

    Returns prompt ids, per-position argmax, last-position top-5 ids and values, the L2 norm of
    all prompt logits and the greedy continuation of ``n_new`` tokens (stop tokens not applied).
    """
    from edgekit.runtime.engine import EagerBackend, Engine

    ids = tokenizer.encode(prompt)
    be = EagerBackend(model)
    logits = be.forward(ids, 0)  # (T, V)
    top = torch.topk(logits[-1], 5)
    eng = Engine(be, None, stop_ids=[])
    greedy = eng.generate(ids, max_new_tokens=n_new).tokens
    # top-1 minus top-2 logit at each greedy step: how close each choice was to a tie
    full = EagerBackend(model).forward(ids + greedy[:-1], 0)[len(ids) - 1:]
    top2 = torch.topk(full, 2, dim=-1).values
    margins = [round(float(a - b), 6) for a, b in top2.tolist()]
    pos2 = torch.topk(logits, 2, dim=-1).values
    return {"prompt": prompt, "prompt_ids": ids, "argmax": logits.argmax(-1).tolist(),
            "argmax_margins": [round(float(a - b), 6) for a, b in pos2.tolist()],
            "top5_ids": top.indices.tolist(), "top5_values": [round(float(v), 6) for v in top.values],
            "logits_l2": float(logits.norm()), "greedy_ids": greedy, "greedy_margins": margins}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights one decode step reads: unique parameters and weight-like buffers
    (packed quantized weights, scales), tied tensors once; not the KV cache or RoPE tables."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[id(p)] = p.numel() * p.element_size()
    for name, b in model.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("k_cache", "v_cache", "rope_cos", "rope_sin", "slots"):
            continue
        seen[id(b)] = b.numel() * b.element_size()
    return sum(seen.values())


def _load(model, max_seq_len: int | None):
    from edgekit.models.load import LoadedModel, build_model, load_model

    if isinstance(model, LoadedModel):
        lm = model
        if max_seq_len and max_seq_len != lm.args.max_seq_len:
            if lm.quant:
                raise UserError("cannot change --max-seq-len of an already loaded quantized model",
                                "pass the checkpoint path instead")
            args = dataclasses.replace(lm.args, max_seq_len=max_seq_len)
            sd = {k: v for k, v in lm.model.state_dict().items()}
            lm = dataclasses.replace(lm, model=build_model(args, sd), args=args)
        return lm
    return load_model(model, max_seq_len=max_seq_len)


def export_package(model: "str | Path | Any | None", out: str | Path,
                   formats: str | Iterable[str] = "executorch", max_seq_len: int | None = None,
                   max_chunk: int = 32, force: bool = False, quant: QuantHook | None = None,
                   log: Callable[[str], None] | None = None,
                   advance: Callable[[int], None] | None = None, verify: bool = True,
                   draft_exit: int | None = None, tree_verify: bool = False) -> dict[str, Any]:
    """Build a package directory at ``out`` and return its manifest.

    Args:
        model: checkpoint path (None = built-in stories260K) or a ``LoadedModel``.
        out: package directory; refused if it exists unless ``force``.
        formats: ``"executorch"``, ``"onnx"``, ``"both"`` or a list of them.
        max_seq_len: KV cache length baked into the programs (default: the checkpoint's).
        max_chunk: most new tokens one ExecuTorch ``forward`` accepts (dynamic T in [1, max_chunk]).
        quant: optional hook applied in the transform stage (see ``QuantHook``).
        log / advance: stage log lines and progress callback (the CLI sends both to stderr).
        verify: check the programs against the golden outputs before publishing ``out``.
        draft_exit: also write an early-exit draft program of the first ``draft_exit`` layers
            (``draft_ee{K}.pte``, and ONNX when exporting ONNX; manifest ``drafts``, see
            ``edgekit/export/draft.py``).
        tree_verify: ExecuTorch programs (target and draft) also get ``verify_tree`` and
            ``compact`` methods sharing the KV buffers with ``forward`` (``edgekit/export/tree.py``);
            ONNX programs (target and draft) get an ``attention_mask`` input (``edgekit/export/onnx.py``).

    Raises:
        UserError: bad arguments, existing ``out`` without ``force``.
        ModelLoadError: checkpoint problems. InternalError: toolchain failures.
    """
    fmts = parse_formats(formats)
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists", "pass --force to overwrite it, or choose another --out")
    if max_seq_len is not None and max_seq_len < 2:
        raise UserError(f"--max-seq-len {max_seq_len} is too small", "use at least 2")
    st = Stages(log, advance)
    with st("load"):
        lm = _load(model, max_seq_len)
    args = lm.args
    if not 1 <= max_chunk <= args.max_seq_len:
        raise UserError(f"--max-chunk {max_chunk} is outside [1, max_seq_len={args.max_seq_len}]",
                        "use e.g. --max-chunk 32")
    st.log(f"  model: {args.arch}, {sum(args.n_params().values()):,} params, max_seq_len "
           f"{args.max_seq_len}, max_chunk {max_chunk}")
    with st("transform"):
        model = lm.model.eval()
        qconf = lm.quant
        if quant is not None:
            # calibrated hooks (edgekit.export.quant_hook) also take the tokenizer
            qconf = quant(model, lm.tokenizer) if getattr(quant, "wants_tokenizer", False) else quant(model)
    with st("golden"):
        gold = golden(model, lm.tokenizer)
        gold["tolerance"] = dict(FP32_TOL)
        if (qconf or {}).get("act_bits") == 8:
            t = A8_REL_TOL * max(abs(v) for v in gold["top5_values"])
            gold["tolerance"] = {"top5_abs": t, "source_max_abs": t, "approximate": ["onnx"], "near_tie": t}
    programs: dict[str, Any] = {}
    with atomic_dir(out, force=force) as tmp, warnings.catch_warnings():
        # The toolchains warn about their own deprecations and about mutable buffers (which
        # serialize() initialises); keep the stage log readable.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        if "executorch" in fmts:
            from edgekit.export.executorch import export_executorch

            if tree_verify:
                from edgekit.export.tree import export_executorch_tree

                with st("export[executorch+tree]"):
                    programs["executorch"] = export_executorch_tree(model, tmp / PTE_FILE, max_chunk, log=st.log)
            else:
                programs["executorch"] = export_executorch(model, tmp / PTE_FILE, max_chunk, log=st.log, stage=st)
        if "onnx" in fmts:
            from edgekit.export.onnx import export_onnx

            programs["onnx"] = export_onnx(model, tmp, log=st.log, stage=st, tree=tree_verify)
        drafts: dict[str, Any] = {}
        if draft_exit is not None:
            from edgekit.export.draft import draft_name, early_exit_model, export_draft_programs

            entry = export_draft_programs(model, tmp, draft_exit, max_chunk, fmts, log=st.log, stage=st,
                                          tree=tree_verify)
            with st("golden[draft]"):  # the draft programs are checked against their own eager model
                entry["golden"] = golden(early_exit_model(model, draft_exit), lm.tokenizer)
                entry["golden"]["tolerance"] = dict(gold["tolerance"])
            drafts[draft_name(draft_exit)] = entry
        with st("write"):
            tok_info = save_tokenizer(lm.tokenizer, tmp)
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "edgekit_version": __version__,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source": {"path": str(lm.source.path), "format": lm.source.format,
                           "sha256": lm.source.sha256() if lm.source.files else None},
                "architecture": args.arch,
                "config": args.to_dict(),
                "tokenizer": tok_info,
                "generation": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 128,
                               "stop_ids": list(args.eos_ids)},
                "max_seq_len": args.max_seq_len,
                "max_chunk": max_chunk,
                "weight_bytes": weight_bytes(model),
                "abi": EDGEKIT_ABI,
                "quantization": qconf,
                "programs": programs,
                **({"drafts": drafts} if drafts else {}),
                "golden": gold,
                "build": {"stage_seconds": st.times, "torch": torch.__version__,
                          "executorch": _version("executorch"), "onnx": _version("onnx"),
                          "python": platform.python_version(), "machine": platform.machine()},
            }
            write_manifest(tmp, manifest)
        if verify:
            from edgekit.export.verify import verify_package

            with st("verify"):
                rep = verify_package(tmp)
            bad = [r for r in rep["rows"] if not r["ok"]]
            if bad:
                raise InternalError(f"exported package failed verification: {bad[0]['check']} "
                                    f"{bad[0]['target']}: {bad[0]['detail']}",
                                    "rerun with EDGEKIT_DEBUG=1 and report it")
            manifest["build"]["stage_seconds"] = st.times
            write_manifest(tmp, manifest)
    st.log(f"wrote {out} ({', '.join(fmts)})")
    return manifest


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
