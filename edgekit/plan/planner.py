"""The memory-bounded planner: enumerate configurations, drop what does not fit, rank the rest.

For a model (a checkpoint path or a shape name) and a device profile, :func:`plan` enumerates
backend x weight preset x LM-head storage x speculative draft x draft length (x BlockFFN sparse
or dense execution), prices each with the memory model (:mod:`edgekit.plan.memory`) and the
speed model (:mod:`edgekit.plan.roofline`), rejects what exceeds the budget (or the NPU's
per-session limit, or the quality bound, or has no kernels on the backend) with a reason, and
ranks the rest by predicted decode speed (or TTFT).

Choosing among speculative settings follows SpecMemo: for the best format, take the draft
setting with the least memory whose predicted speed stays >= 96% of that format's best.

Example::

    from edgekit.plan import plan, load_plan
    res = plan("llama-3.2-1b", "galaxy-s24", budget_mb=3072)
    res.chosen.preset, res.chosen.decode_tok_s, res.chosen.memory.total
    res.write_plan("plan.json"); load_plan("plan.json").preset
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgekit import __version__
from edgekit.errors import BudgetError, UserError
from edgekit.models.config import SHAPES, ModelArgs
from edgekit.plan.memory import (DTYPE_BYTES, MIB, NO_DRAFT, VARIANT_SHAPES, Draft, MemoryBreakdown,
                                 ModelShape, RuntimeSpec, WeightFormat, estimate_memory, self_quant_format)
from edgekit.plan.presets import PRESETS, get_preset
from edgekit.plan.roofline import (SpeedEstimate, Target, decode_speed, forward_time, prefill_time,
                                   resolve_target)
from edgekit.profile.catalog import find_profile
from edgekit.profile.schema import DeviceProfile

PLAN_SCHEMA = "edgekit.plan"
PLAN_SCHEMA_VERSION = 1
SPECMEMO_KEEP = 0.96  # keep >= 96% of the best speculative throughput (papers.md section 1)
DRAFT_LENGTHS = (1, 2, 3, 4, 5, 6, 8)
KV_DTYPES = ("fp32", "fp16", "bf16", "int8")

# Acceptance-rate priors (per drafted token) when --acceptance is not given. They are
# assumptions, not measurements: measure tau with `edgekit bench` and pass --acceptance.
ALPHA_PRIORS = {
    "model": (0.6, "small same-family draft model: 0.5-0.8 in Leviathan et al. 2023"),
    "self-quant": ({8: 0.95, 4: 0.85, 3: 0.75, 2: 0.6},
                   "quantized copy of the target: high agreement at 4-8 bits, falling at 2-3 bits"),
    "early-exit": (None, "0.3 + 0.55 * K/L, for LayerSkip-style trained exits (untrained exits accept far less)"),
    "medusa": (0.6, "Medusa-1 heads: ~2.2 tokens per step with 3 heads in a chain"),
}


def acceptance_prior(draft: Draft, shape: ModelShape) -> float:
    """The prior acceptance rate of ``draft`` on ``shape`` (see :data:`ALPHA_PRIORS`)."""
    if draft.kind == "self-quant":
        return ALPHA_PRIORS["self-quant"][0].get(draft.bits, 0.6)
    if draft.kind == "early-exit":
        return min(0.9, 0.3 + 0.55 * draft.exit_layer / shape.n_layers)
    return ALPHA_PRIORS[draft.kind][0]


# --- inputs -----------------------------------------------------------------------------------

def resolve_model(model: str | os.PathLike | ModelArgs | ModelShape) -> tuple[ModelShape, dict]:
    """A :class:`ModelShape` and a description from a shape name (``edgekit.models.config.SHAPES``
    or :data:`VARIANT_SHAPES`), a checkpoint path, ``ModelArgs`` or a ``ModelShape``.

    Raises:
        UserError: neither a known shape nor an existing path (the hint lists the shapes).
    """
    if isinstance(model, ModelShape):
        return model, {"name": model.name, "source": "shape"}
    if isinstance(model, ModelArgs):
        return ModelShape.from_args(model, "model"), {"name": "model", "source": "args", "args": model.to_dict()}
    spec = str(model)
    if spec in SHAPES:
        args = SHAPES[spec]
        return ModelShape.from_args(args, spec), {"name": spec, "source": "shape", "args": args.to_dict()}
    if spec in VARIANT_SHAPES:
        return VARIANT_SHAPES[spec], {"name": spec, "source": "shape"}
    p = Path(spec)
    if not p.exists():
        raise UserError(f"{spec!r} is neither a model shape nor an existing path",
                        f"pass a checkpoint path or one of: {', '.join([*SHAPES, *VARIANT_SHAPES])}")
    if p.is_dir() and (p / "config.json").is_file() and not (p / "edgekit_checkpoint.json").exists():
        from edgekit.models.load import hf_args  # config.json is enough: no weights needed

        args = hf_args(json.loads((p / "config.json").read_text()), None)
    else:
        from edgekit.models.load import load_model

        args = load_model(p).args
    name = p.stem if p.is_file() else p.name
    return ModelShape.from_args(args, name), {"name": name, "source": "path", "path": str(p.resolve()),
                                              "args": args.to_dict()}


def parse_drafts(spec: str, shape: ModelShape) -> list[Draft]:
    """Draft kinds for ``--draft`` (lengths are set later): ``none``, ``auto`` (none, early exit at
    L/4 and L/2, 4- and 2-bit quantized self-drafts, same-vocabulary shapes under a quarter of the
    target's size), ``early-exit:K``, ``self-quant:BITS``, ``medusa:K``, or a draft model (shape
    name or path). Medusa heads are never picked by ``auto``: they need trained heads.

    Raises:
        UserError: a malformed spec.
    """
    s = spec.strip()
    if s == "none":
        return [NO_DRAFT]
    if s == "auto":
        out = [NO_DRAFT]
        for k in sorted({max(1, shape.n_layers // 4), max(1, shape.n_layers // 2)}):
            if k < shape.n_layers:
                out.append(Draft("early-exit", exit_layer=k))
        out += [Draft("self-quant", bits=b) for b in (4, 2)]
        for name, args in SHAPES.items():
            d = ModelShape.from_args(args, name)
            if d.vocab_size == shape.vocab_size and d.n_params() < shape.n_params() / 4:
                out.append(Draft("model", shape=d, name=name))
        return out
    kind, _, arg = s.partition(":")
    if kind in ("early-exit", "self-quant", "medusa"):
        try:
            n = int(arg)
        except ValueError:
            raise UserError(f"--draft {s}: expected {kind}:N with an integer N",
                            "e.g. --draft early-exit:4, --draft self-quant:4, --draft medusa:3") from None
        if kind == "early-exit":
            if not 1 <= n < shape.n_layers:
                raise UserError(f"--draft {s}: exit layer must be in 1..{shape.n_layers - 1}",
                                f"{shape.name} has {shape.n_layers} layers")
            return [Draft("early-exit", exit_layer=n)]
        if kind == "self-quant":
            if n not in (2, 3, 4, 8):
                raise UserError(f"--draft {s}: self-quant bits must be 2, 3, 4 or 8", "e.g. --draft self-quant:4")
            return [Draft("self-quant", bits=n)]
        if n < 1:
            raise UserError(f"--draft {s}: need at least one Medusa head", "e.g. --draft medusa:3")
        return [Draft("medusa", heads=n)]
    dshape, info = resolve_model(s)
    return [Draft("model", shape=dshape, name=info["name"])]


# --- candidates -------------------------------------------------------------------------------

@dataclass
class Candidate:
    """One priced configuration."""

    backend: str
    preset: str
    lm_head: str
    draft: Draft
    context: int
    fmt: WeightFormat
    memory: MemoryBreakdown
    speed: SpeedEstimate
    kv_dtype: str
    float_dtype: str
    runtime: RuntimeSpec
    prefill_chunk: int
    sampling: bool
    ffn: str = "dense"
    budget: int = 0
    reasons: list[str] = field(default_factory=list)
    max_context: int | None = None

    def memory_at(self, shape: ModelShape, context: int) -> MemoryBreakdown:
        """This configuration's memory at another context."""
        return _memory(shape, self.fmt, self.draft, context=context, kv_b=DTYPE_BYTES[self.kv_dtype],
                       act_b=DTYPE_BYTES[self.float_dtype], chunk=self.prefill_chunk, sampling=self.sampling,
                       runtime=self.runtime)

    @property
    def fits(self) -> bool:
        return not self.reasons

    @property
    def decode_tok_s(self) -> float:
        return self.speed.decode_tok_s

    @property
    def ttft_s(self) -> float:
        return self.speed.ttft_s

    @property
    def label(self) -> str:
        head = "" if self.lm_head == "quantized" or PRESETS[self.preset].is_float else "+fphead"
        d = self.draft.label if self.draft.kind == "none" else f"{self.draft.label}/k{self.draft.length}"
        ffn = "" if self.ffn == "dense" else "/sparse-ffn"
        return f"{self.preset}{head}/{self.backend}/draft:{d}{ffn}"

    def to_dict(self, full: bool = True) -> dict:
        d = {"label": self.label, "backend": self.backend, "preset": self.preset, "lm_head": self.lm_head,
             "draft": _draft_dict(self.draft), "context": self.context, "ffn": self.ffn,
             "float_dtype": self.float_dtype, "kv_dtype": self.kv_dtype,
             "decode_tok_s": self.decode_tok_s, "ttft_s": self.ttft_s,
             "peak_bytes": self.memory.total, "weights_bytes": self.memory.weights,
             "generation_bytes": self.memory.generation, "budget_bytes": self.budget,
             "fits": self.fits, "reasons": list(self.reasons), "max_context": self.max_context,
             "expected_ppl_ratio": PRESETS[self.preset].rel_ppl}
        if full:
            d["memory"] = self.memory.to_dict()
            d["speed"] = self.speed.to_dict()
        return d


def _draft_dict(d: Draft) -> dict:
    out: dict = {"kind": d.kind, "label": d.label, "length": d.length,
                 "verify_tokens": d.verify_tokens}
    if d.kind == "early-exit":
        out["exit_layer"] = d.exit_layer
    if d.kind == "self-quant":
        out["bits"] = d.bits
    if d.kind == "medusa":
        out["heads"] = d.heads
    if d.kind == "model":
        out["model"] = d.name
    return out


def _engine_for(backend: str) -> str:
    return {"xnnpack": "executorch", "onnxruntime": "onnxruntime", "cuda": "torch", "rocm": "torch"}.get(
        backend, "executorch")


def _draft_step_and_prefill(draft: Draft, shape: ModelShape, fmt: WeightFormat, tgt: Target, *,
                            context: int, prompt: int, kv_bytes: float, chunk: int) -> tuple[float, float]:
    """(seconds of one draft forward, extra prefill seconds the draft adds to TTFT)."""
    s_mid = (min(prompt, context) + context) // 2
    if draft.kind == "early-exit":
        sub = shape.replace(n_layers=draft.exit_layer)
        return forward_time(sub, fmt, tgt, tokens=1, context=s_mid, kv_bytes=kv_bytes).seconds, 0.0
    if draft.kind == "self-quant":
        dfmt = self_quant_format(draft.bits, fmt)
        return (forward_time(shape, dfmt, tgt, tokens=1, context=s_mid, kv_bytes=kv_bytes).seconds,
                prefill_time(shape, dfmt, tgt, prompt=min(prompt, context), chunk=chunk, kv_bytes=kv_bytes))
    if draft.kind == "medusa":
        # K heads: a residual block and an LM head each, run once on the last hidden state.
        head = shape.replace(n_layers=0, n_encoder_layers=0)
        one = forward_time(head, fmt, tgt, tokens=1, context=0, kv_bytes=kv_bytes).seconds
        return draft.heads * one, 0.0
    assert draft.shape is not None
    dfmt = draft.fmt or fmt
    return (forward_time(draft.shape, dfmt, tgt, tokens=1, context=s_mid, kv_bytes=kv_bytes).seconds,
            prefill_time(draft.shape, dfmt, tgt, prompt=min(prompt, context), chunk=chunk, kv_bytes=kv_bytes))


# --- result -----------------------------------------------------------------------------------

@dataclass
class PlanResult:
    """What :func:`plan` found. ``chosen`` is the configuration to use; ``ranked`` every fitting
    one best first; ``rejected`` every dropped one with its reasons."""

    model: dict
    shape: ModelShape
    device: DeviceProfile
    targets: dict[str, Target]
    objective: str
    context: int
    prompt_tokens: int
    prefill_chunk: int
    budget_bytes: dict[str, int]
    max_ppl_increase: float
    chosen: Candidate
    ranked: list[Candidate]
    rejected: list[Candidate]
    selection: str

    def to_dict(self, top: int = 5) -> dict:
        best_plain = next((c for c in self.ranked if c.draft.kind == "none"), None)
        return {
            "schema": "edgekit.plan-report", "schema_version": PLAN_SCHEMA_VERSION,
            "model": {**self.model, "n_params": self.shape.n_params()},
            "device": {"name": self.device.name, "class": self.device.identity.device_class,
                       "display_name": self.device.identity.display_name},
            "targets": {k: t.to_dict() for k, t in self.targets.items()},
            "objective": self.objective, "context": self.context, "prompt_tokens": self.prompt_tokens,
            "prefill_chunk": self.prefill_chunk, "budget_bytes": self.budget_bytes,
            "max_ppl_increase": self.max_ppl_increase, "selection": self.selection,
            "chosen": self.chosen.to_dict(),
            "best_without_draft": best_plain.to_dict(full=False) if best_plain else None,
            "top": [c.to_dict(full=False) for c in self.ranked[:top]],
            "n_candidates": len(self.ranked) + len(self.rejected), "n_fitting": len(self.ranked),
            "rejected": [c.to_dict(full=False) for c in self.rejected],
        }

    def plan_file(self) -> dict:
        """The chosen configuration as the ``plan.json`` that ``edgekit export --plan`` reads."""
        c = self.chosen
        p = PRESETS[c.preset]
        pf = PlanFile(
            schema_name=PLAN_SCHEMA, schema_version=PLAN_SCHEMA_VERSION, created_by=f"edgekit {__version__}",
            model=self.model, device=self.device.name, backend=c.backend, preset=c.preset, bits=p.bits,
            group_size=p.group_size, lm_head=c.lm_head,
            head_bits=(p.bits if (c.lm_head == "quantized" and not p.is_float) else None),
            embedding_bits=None, float_dtype=c.float_dtype, kv_dtype=c.kv_dtype,
            context=c.context, max_seq_len=c.context, prefill_chunk=self.prefill_chunk,
            draft=PlanDraft(**{k: v for k, v in _draft_dict(c.draft).items() if k != "verify_tokens"}),
            ffn=c.ffn, budget_bytes=c.budget,
            predicted=PlanPrediction(decode_tok_s=c.decode_tok_s, ttft_s=c.ttft_s, peak_bytes=c.memory.total,
                                     weights_bytes=c.memory.weights, generation_bytes=c.memory.generation,
                                     terms=dict(c.memory.terms), prompt_tokens=self.prompt_tokens))
        return pf.model_dump(mode="json", by_alias=True)

    def write_plan(self, path: str | os.PathLike) -> Path:
        """Write :meth:`plan_file` as JSON (atomically: no half-written file on failure)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.plan_file(), indent=2, sort_keys=True) + "\n")
            os.replace(tmp, p)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {p}: {e.strerror}", "pass --out to a writable path") from None
        return p


# --- plan.json ----------------------------------------------------------------------------------

class PlanDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["none", "model", "early-exit", "self-quant", "medusa"]
    label: str
    length: int = Field(ge=0)
    exit_layer: Optional[int] = Field(None, ge=1)
    bits: Optional[int] = None
    heads: Optional[int] = Field(None, ge=1)
    model: Optional[str] = None


class PlanPrediction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decode_tok_s: float = Field(gt=0)
    ttft_s: float = Field(ge=0)
    peak_bytes: int = Field(gt=0)
    weights_bytes: int = Field(gt=0)
    generation_bytes: int = Field(ge=0)
    prompt_tokens: int = Field(ge=1)
    terms: dict[str, int]


class PlanFile(BaseModel):
    """``plan.json``, schema version 1: the configuration ``export``/``quantize`` consume."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_name: Literal["edgekit.plan"] = Field(PLAN_SCHEMA, alias="schema")
    schema_version: Literal[1]
    created_by: str
    model: dict
    device: str
    backend: str
    preset: str
    bits: int
    group_size: Optional[int]
    lm_head: Literal["quantized", "float"]
    head_bits: Optional[int]
    embedding_bits: Optional[int]
    float_dtype: Literal["fp32", "fp16", "bf16"]
    kv_dtype: Literal["fp32", "fp16", "bf16", "int8"]
    context: int = Field(ge=1)
    max_seq_len: int = Field(ge=1)
    prefill_chunk: int = Field(ge=1)
    draft: PlanDraft
    ffn: Literal["dense", "sparse"] = "dense"
    budget_bytes: int = Field(gt=0)
    predicted: PlanPrediction

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; known: {', '.join(PRESETS)}")
        return v

    @model_validator(mode="after")
    def _matches_preset(self) -> "PlanFile":
        p = PRESETS[self.preset]
        if (p.bits, p.group_size) != (self.bits, self.group_size):
            raise ValueError(f"bits/group_size {self.bits}/{self.group_size} do not match preset {self.preset}")
        return self


def load_plan(path: str | os.PathLike) -> PlanFile:
    """Read and validate a ``plan.json`` written by ``edgekit plan --out``.

    Raises:
        UserError: missing file, bad JSON, another schema or version, or a bad field (named).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"plan file {p} does not exist", "write one with `edgekit plan MODEL --device D --out FILE`")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid JSON ({e})", "regenerate it with `edgekit plan ... --out FILE`") from None
    if not isinstance(data, dict) or data.get("schema") != PLAN_SCHEMA:
        raise UserError(f"{p} is not an edgekit plan (schema {data.get('schema') if isinstance(data, dict) else None!r})",
                        "pass the file written by `edgekit plan --out`")
    if data.get("schema_version") != PLAN_SCHEMA_VERSION:
        raise UserError(f"{p}: plan schema version {data.get('schema_version')} is not supported",
                        f"this edgekit reads version {PLAN_SCHEMA_VERSION}; re-run `edgekit plan`")
    try:
        return PlanFile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise UserError(f"{p}: field {loc}: {err['msg']}", "regenerate it with `edgekit plan ... --out FILE`") from None


# --- the planner --------------------------------------------------------------------------------

def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def plan(model: str | os.PathLike | ModelArgs | ModelShape, device: str | os.PathLike | DeviceProfile, *,
         budget_mb: float | None = None, context: int | None = None, draft: str = "auto",
         draft_length: int | None = None, objective: Literal["decode", "ttft"] = "decode",
         backend: str | None = None, presets: list[str] | None = None, threads: int | None = None,
         prompt_tokens: int | None = None, prefill_chunk: int = 128, max_ppl_increase: float = 0.10,
         acceptance: float | None = None, kv_dtype: str | None = None,
         runtime: Literal["python", "native"] = "python", sampling: bool = False) -> PlanResult:
    """Plan a deployment of ``model`` on ``device`` under a memory budget.

    Args:
        model: a shape name (``llama-3.2-1b``, see ``edgekit.models.config.SHAPES``) or a
            checkpoint path; ``ModelArgs``/``ModelShape`` also work.
        device: a catalog name, a profile JSON path, or a :class:`DeviceProfile`.
        budget_mb: memory budget in MiB; default: each backend's pool (app-usable RAM, or the
            GPU's usable memory for discrete GPUs).
        context: KV cache rows (prompt + generated tokens); default min(max_seq_len, 2048).
        draft: ``none|auto|MODEL|early-exit:K|self-quant:BITS|medusa:K``.
        draft_length: fix k; default: try 1-6 and 8 and apply the SpecMemo 96% rule.
        objective: rank by ``decode`` tokens/s or by ``ttft``.
        backend: restrict to one backend of the device.
        presets: restrict the weight presets (default: all).
        max_ppl_increase: drop presets whose expected perplexity ratio exceeds ``1 + this``.
        acceptance: per-token draft acceptance rate; default: the priors in :data:`ALPHA_PRIORS`.
        kv_dtype: KV cache dtype (:data:`KV_DTYPES`); default: the backend's (fp32 on CPU backends,
            as edgekit's model keeps it, fp16 elsewhere).
        runtime: ``python`` (edgekit's Python runtime) or ``native`` (a C++ runner) for the
            process overhead term.

    Returns:
        A :class:`PlanResult`.

    Raises:
        BudgetError: nothing fits; the message says the smallest budget that would, and the hint
            which knob (budget, context, quality bound) gets there.
        UserError / ProfileError: bad model, device, backend, preset or draft spec.
    """
    shape, model_info = resolve_model(model)
    prof = device if isinstance(device, DeviceProfile) else find_profile(device)
    if objective not in ("decode", "ttft"):
        raise UserError(f"unknown objective {objective!r}", "use --objective decode or --objective ttft")
    if context is None:
        context = min(shape.max_seq_len, 2048)
    if context < 1:
        raise UserError(f"--context must be >= 1, got {context}", "e.g. --context 2048")
    if context > shape.max_seq_len:
        raise UserError(f"--context {context} exceeds {shape.name}'s maximum {shape.max_seq_len}",
                        f"use --context {shape.max_seq_len} or less")
    if budget_mb is not None and budget_mb <= 0:
        raise UserError(f"--budget-mb must be positive, got {budget_mb}", "e.g. --budget-mb 3072")
    if draft_length is not None and draft_length < 1:
        raise UserError(f"--draft-length must be >= 1, got {draft_length}", "e.g. --draft-length 4")
    prompt = min(prompt_tokens or min(256, max(1, context // 2)), context)
    names = presets or list(PRESETS)
    for n in names:
        get_preset(n)
    backends = [backend] if backend else list(dict.fromkeys(prof.backends))
    targets = {b: resolve_target(prof, b, threads) for b in backends}
    lengths = (draft_length,) if draft_length else DRAFT_LENGTHS
    drafts = parse_drafts(draft, shape)

    cands: list[Candidate] = []
    budgets: dict[str, int] = {}
    for b, tgt in targets.items():
        info = tgt.info
        budget = int(budget_mb * MIB) if budget_mb is not None else tgt.memory_bytes
        budgets[b] = budget
        kv_name = kv_dtype or info.kv_dtype
        if kv_name not in KV_DTYPES:
            raise UserError(f"unknown KV cache dtype {kv_name!r}", f"use one of {', '.join(KV_DTYPES)}")
        kv_b = DTYPE_BYTES[kv_name]
        rt = RuntimeSpec(runtime=runtime, engine=_engine_for(b), backend=b,
                         gpu_pool=info.kind == "gpu" and not tgt.unified)
        for pname in names:
            preset = PRESETS[pname]
            float_name = "fp16" if preset.bits == 16 else "fp32" if preset.bits == 32 else info.float_dtype
            float_b = int(DTYPE_BYTES[float_name])
            heads = ["float"] if preset.is_float else ["quantized", "float"]
            for head in heads:
                fmt = WeightFormat.from_preset(preset, float_bytes=float_b, lm_head=head)  # type: ignore[arg-type]
                for ffn in (("sparse", "dense") if shape.is_blockffn else ("dense",)):
                    sparse = ffn == "sparse"
                    for d0 in drafts:
                        if draft == "auto" and d0.kind == "self-quant" and d0.bits >= preset.bits:
                            continue  # a self-draft only helps below the target's width
                        for k in ((0,) if d0.kind == "none" else lengths):
                            d = _with_length(d0, k)
                            cands.append(_price(shape, fmt, tgt, pname, head, d, context=context, prompt=prompt,
                                                chunk=prefill_chunk, kv_b=kv_b, kv_name=kv_name,
                                                float_name=float_name, runtime=rt, sampling=sampling,
                                                acceptance=acceptance, sparse=sparse, budget=budget,
                                                max_ppl_increase=max_ppl_increase))
    fitting = [c for c in cands if c.fits]
    rejected = [c for c in cands if not c.fits]
    if not fitting:
        raise _nothing_fits(cands, shape, prof, context, budgets)
    if objective == "decode":
        fitting.sort(key=lambda c: (-c.decode_tok_s, PRESETS[c.preset].rel_ppl, c.memory.total))
    else:
        fitting.sort(key=lambda c: (c.ttft_s, -c.decode_tok_s, c.memory.total))
    best = fitting[0]
    same = [c for c in fitting if (c.backend, c.preset, c.lm_head, c.ffn) == (best.backend, best.preset, best.lm_head, best.ffn)]
    if objective == "decode":
        keep = [c for c in same if c.decode_tok_s >= SPECMEMO_KEEP * best.decode_tok_s]
    else:
        keep = [c for c in same if c.ttft_s <= best.ttft_s / SPECMEMO_KEEP]
    chosen = min(keep, key=lambda c: (c.memory.total, -c.decode_tok_s))
    selection = (f"fastest format {best.preset}/{best.backend}; among its draft settings the least memory within "
                 f"{SPECMEMO_KEEP:.0%} of its best predicted {'decode speed' if objective == 'decode' else 'TTFT'} "
                 "(SpecMemo)")
    ranked = [chosen] + [c for c in fitting if c is not chosen]
    for c in ranked[:10]:
        c.max_context = _max_context(c, shape)
    return PlanResult(model=model_info, shape=shape, device=prof, targets=targets, objective=objective,
                      context=context, prompt_tokens=prompt, prefill_chunk=prefill_chunk, budget_bytes=budgets,
                      max_ppl_increase=max_ppl_increase, chosen=chosen, ranked=ranked, rejected=rejected,
                      selection=selection)


def _with_length(d: Draft, k: int) -> Draft:
    if d.kind == "medusa":
        return replace(d, length=d.heads)
    return replace(d, length=k)


def _memory(shape: ModelShape, fmt: WeightFormat, d: Draft, *, context: int, kv_b: float, act_b: float,
            chunk: int, sampling: bool, runtime: RuntimeSpec) -> MemoryBreakdown:
    return estimate_memory(shape, fmt, context=context, kv_bytes=kv_b, act_bytes=act_b, draft=d,
                           prefill_chunk=chunk, sampling=sampling, runtime=runtime)


def _price(shape: ModelShape, fmt: WeightFormat, tgt: Target, preset: str, head: str, d: Draft, *,
           context: int, prompt: int, chunk: int, kv_b: float, kv_name: str, float_name: str,
           runtime: RuntimeSpec, sampling: bool, acceptance: float | None, sparse: bool, budget: int,
           max_ppl_increase: float) -> Candidate:
    act_b = DTYPE_BYTES[float_name]
    mem = _memory(shape, fmt, d, context=context, kv_b=kv_b, act_b=act_b, chunk=chunk, sampling=sampling,
                  runtime=runtime)
    # edgekit's float XNNPACK programs attend their whole static KV cache at every step; a
    # quantized program carries edgekit's kernels and its attention op reads only the context.
    static = tgt.backend == "xnnpack" and fmt.bits >= 16
    if d.kind == "none":
        speed = decode_speed(shape, fmt, tgt, context=context, prompt=prompt, kv_bytes=kv_b,
                             prefill_chunk=chunk, sparse=sparse, static_cache=static)
    else:
        alpha = acceptance if acceptance is not None else acceptance_prior(d, shape)
        step_s, extra_prefill = _draft_step_and_prefill(d, shape, fmt, tgt, context=context, prompt=prompt,
                                                        kv_bytes=kv_b, chunk=chunk)
        speed = decode_speed(shape, fmt, tgt, context=context, prompt=prompt, kv_bytes=kv_b, prefill_chunk=chunk,
                             draft_kind=d.kind, k=d.length, alpha=alpha, draft_step_s=step_s,
                             verify_tokens=d.verify_tokens, draft_calls=1 if d.kind == "medusa" else None,
                             sparse=sparse, static_cache=static)
        speed.ttft_s += extra_prefill
    c = Candidate(backend=tgt.backend, preset=preset, lm_head=head, draft=d, context=context, fmt=fmt,
                  memory=mem, speed=speed, kv_dtype=kv_name, float_dtype=float_name, runtime=runtime,
                  prefill_chunk=chunk, sampling=sampling, ffn="sparse" if (sparse and shape.is_blockffn) else "dense", budget=budget)
    p = PRESETS[preset]
    if preset not in tgt.info.presets:
        c.reasons.append(f"backend {tgt.backend} has no kernels for {preset}")
    if d.kind == "self-quant" and d.bits >= p.bits:
        c.reasons.append(f"a {d.bits}-bit self-draft is not cheaper than the {preset} target")
    if p.rel_ppl - 1.0 > max_ppl_increase + 1e-9:
        c.reasons.append(f"expected perplexity +{(p.rel_ppl - 1) * 100:.0f}% ({p.rel_ppl_source}) exceeds "
                         f"--max-ppl-increase {max_ppl_increase:.0%}")
    if mem.total > budget:
        c.reasons.append(f"needs {_gib(mem.total)} > budget {_gib(budget)} (weights {_gib(mem.weights)} + "
                         f"generation {_gib(mem.generation)})")
    if tgt.session_limit_bytes is not None:
        session = mem.weights + mem.terms.get("kv_cache", 0)
        if session > tgt.session_limit_bytes:
            parts = -(-session // tgt.session_limit_bytes)
            c.reasons.append(f"weights + KV {_gib(session)} exceed the NPU's per-session limit "
                             f"{_gib(tgt.session_limit_bytes)} (would need {parts} model parts)")
    return c


def _max_context(c: Candidate, shape: ModelShape) -> int:
    """Largest context (KV rows) at which ``c`` still fits its budget; 0 if none does."""
    def fits(n: int) -> bool:
        return c.memory_at(shape, n).total <= c.budget

    if fits(shape.max_seq_len):
        return shape.max_seq_len
    lo, hi = 0, shape.max_seq_len
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _nothing_fits(cands: list[Candidate], shape: ModelShape, prof: DeviceProfile, context: int,
                  budgets: dict[str, int]) -> BudgetError:
    """The error for an empty plan: the smallest budget that would fit and the knob to turn."""
    def only_budget(c: Candidate) -> bool:
        return all(r.startswith("needs ") for r in c.reasons)

    budget_only = [c for c in cands if only_budget(c)]
    budget_txt = ", ".join(f"{_gib(v)} ({k})" for k, v in budgets.items())
    where = f"{shape.name} on {prof.name} at context {context}"
    if budget_only:
        best = min(budget_only, key=lambda c: c.memory.total)
        need_mb = -(-best.memory.total // MIB)
        hints = [f"--budget-mb {need_mb} fits {best.label}"]
        by_ctx = []
        for c in sorted(budget_only, key=lambda c: c.memory.total)[:20]:
            n = _max_context(c, shape)
            if n >= 1:
                by_ctx.append((n, c))
        if by_ctx:
            n, c = max(by_ctx, key=lambda t: t[0])
            hints.append(f"--context {n} fits {c.label} in the current budget")
        looser = [c for c in cands if c.reasons and all(r.startswith("expected perplexity") for r in c.reasons)]
        if looser:
            c = min(looser, key=lambda c: PRESETS[c.preset].rel_ppl)
            hints.append(f"--max-ppl-increase {PRESETS[c.preset].rel_ppl - 1 + 0.005:.2f} allows {c.label}, which fits")
        return BudgetError(f"nothing fits {budget_txt} for {where}: the smallest configuration needs "
                           f"{_gib(best.memory.total)} ({best.label})", "; or ".join(hints))
    reasons = sorted({r.split(" (")[0] for c in cands for r in c.reasons})
    knobs = {"self-draft": "a self-quant draft with fewer bits than the preset",
             "no kernels": "another --backend or --preset", "perplexity": "a larger --max-ppl-increase",
             "per-session": "another --backend than the NPU", "needs ": "a larger --budget-mb"}
    hint = [k for key, k in knobs.items() if any(key in r for r in reasons)]
    return BudgetError(f"no configuration of {where} is allowed: {'; '.join(reasons[:3])}",
                       "try " + ", or ".join(hint or ["other options"]))
