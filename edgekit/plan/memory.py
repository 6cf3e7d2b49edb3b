"""Memory model: bytes a model needs on a device, term by term (SpecMemo, papers.md section 1).

Every term is a named line of a :class:`MemoryBreakdown`; ``weights`` are the ``weights.*``
terms and *generation memory* is everything else (KV cache, speculative tail, logits,
activations, runtime). The model covers

- weights at any bit width and group size: ``bits/8`` per weight plus an fp16 scale and a float
  offset per group; embeddings, norms, biases and routers stay float; the LM head is quantized,
  float, or shared with a tied embedding;
- KV cache ``2 * L * d_kv * b_kv * B * S_alloc`` (GQA through ``d_kv = n_kv_heads * head_dim``);
- speculative decoding: draft weights (a draft model, a quantized self-copy, Medusa heads, or
  nothing for early exit), draft KV, the candidate tail of ``T`` KV rows under verification, the
  tree mask, logits for ``T x V`` (x (1 + heads) for Medusa; + an fp32 softmax copy when
  sampling) and the draft's logits;
- activations of the largest forward (a ``T``-token verify, a prefill chunk, or the encoder);
- the runtime: the process baseline (Python + runtime imports, or a native runner), the GPU
  context, the allocator's slack, and the extra copies an ExecuTorch/XNNPACK program holds (the
  non-delegated embedding at first execution, a tied LM head exported as its own copy, a second
  KV cache: :data:`KV_COPIES`);
- encoder-decoder models (decoder self-attention KV for output tokens + cross-attention KV for
  the input, computed once) and BlockFFN (the router's weights; the active-expert fraction
  matters for speed, not memory, since all experts stay resident).

The runtime numbers are the calibration knobs: :data:`PROCESS_BASELINE` holds measured process
RSS (:data:`PROCESS_LIBRARY_PAGES`: how much of it is shared-library pages, whose resident size
depends on the page cache), :data:`EMBEDDING_COPIES` the measured delegate overhead, and
:func:`measure_process_baseline` re-measures the baseline on the machine at hand.

Example::

    from edgekit.models.config import SHAPES
    from edgekit.plan.memory import ModelShape, WeightFormat, estimate_memory
    shape = ModelShape.from_args(SHAPES["llama-2-7b"], "llama-2-7b")
    m = estimate_memory(shape, WeightFormat(bits=16), context=4096, kv_bytes=2, runtime=None)
    m.terms["kv_cache"] / 2**30     # 2.0
    m.weights / 2**30               # ~12.55
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

from edgekit.errors import UserError
from edgekit.models.config import ModelArgs
from edgekit.plan.presets import QuantPreset, get_preset
from edgekit.quant.layout import SUPPORTED_BITS, Layout

MIB = 1 << 20
GIB = 1 << 30

DTYPE_BYTES: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


# --- model shape ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """What the memory and speed models need to know about an architecture.

    ``n_layers`` counts decoder layers. ``n_encoder_layers > 0`` makes an encoder-decoder whose
    decoder layers also carry cross-attention. ``n_experts > 0`` makes the FFN a BlockFFN:
    ``hidden_dim = n_experts * expert width``, a non-gated up/down pair plus an
    ``n_experts x dim`` router; ``active_fraction`` is the expected share of experts active per
    token (1 - TLS) or per verified chunk (1 - CLS).
    """

    name: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int
    max_seq_len: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    ffn_gated: bool = True
    n_encoder_layers: int = 0
    n_experts: int = 0
    active_fraction: float = 1.0

    @classmethod
    def from_args(cls, args: ModelArgs, name: str = "model") -> "ModelShape":
        """The shape of a ``ModelArgs`` (BlockFFN fields are read when the args carry them)."""
        blockffn = args.ffn_type == "blockffn"
        n_experts = int(getattr(args, "n_experts", 0) or 0) if blockffn else 0
        return cls(name=name, dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                   n_kv_heads=args.n_kv_heads, head_dim=int(args.head_dim), hidden_dim=args.hidden_dim,
                   vocab_size=args.vocab_size, max_seq_len=args.max_seq_len,
                   tie_embeddings=args.tie_embeddings, qkv_bias=args.qkv_bias,
                   ffn_gated=not blockffn, n_experts=n_experts,
                   active_fraction=float(getattr(args, "active_fraction", 1.0) or 1.0))

    def replace(self, **kw) -> "ModelShape":
        return dataclasses.replace(self, **kw)

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def is_encoder_decoder(self) -> bool:
        return self.n_encoder_layers > 0

    @property
    def is_blockffn(self) -> bool:
        return self.n_experts > 0

    def attention_matrices(self) -> list[tuple[int, int]]:
        """(out, in) of q, k, v, o."""
        d = self.dim
        return [(self.q_dim, d), (self.kv_dim, d), (self.kv_dim, d), (d, self.q_dim)]

    def ffn_matrices(self) -> list[tuple[int, int]]:
        """(out, in) of the FFN: w1, w3, w2 for SwiGLU; up, down otherwise."""
        d, h = self.dim, self.hidden_dim
        return [(h, d), (h, d), (d, h)] if self.ffn_gated else [(h, d), (d, h)]

    def linear_groups(self) -> dict[str, tuple[list[tuple[int, int]], int]]:
        """Quantizable matrices by role: ``role -> ([(out, in), ...], repeat count)``."""
        groups = {
            "decoder.attention": (self.attention_matrices(), self.n_layers),
            "decoder.ffn": (self.ffn_matrices(), self.n_layers),
        }
        if self.is_encoder_decoder:
            groups["decoder.cross_attention"] = (self.attention_matrices(), self.n_layers)
            groups["encoder.attention"] = (self.attention_matrices(), self.n_encoder_layers)
            groups["encoder.ffn"] = (self.ffn_matrices(), self.n_encoder_layers)
        return groups

    def n_linear(self) -> int:
        return sum(o * i * n for mats, n in self.linear_groups().values() for o, i in mats)

    def n_float(self) -> dict[str, int]:
        """Parameters kept in float: norms, q/k/v biases, BlockFFN routers (+ their gains)."""
        layers = self.n_layers + self.n_encoder_layers
        norms_per_layer = 3 if self.is_encoder_decoder else 2
        norms = self.n_layers * norms_per_layer * self.dim + self.n_encoder_layers * 2 * self.dim
        norms += self.dim * (2 if self.is_encoder_decoder else 1)  # final norm(s)
        bias = layers * (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        router = layers * self.n_experts * (self.dim + 1) if self.is_blockffn else 0
        return {"norm": norms, "bias": bias, "router": router}

    def n_params(self) -> int:
        """All parameters (the LM head counted only when untied)."""
        emb = self.vocab_size * self.dim
        return emb * (1 if self.tie_embeddings else 2) + self.n_linear() + sum(self.n_float().values())


# Shapes of the architecture variants papers.md describes, so plans can compare them without
# weights. Vocabulary sizes: the encoder-decoder is the released 330M model (vocab 32128);
# BlockFFN-Small reuses Llama-2's 32000-token vocabulary as a stand-in (assumption).
VARIANT_SHAPES: dict[str, ModelShape] = {
    "encdec-330m": ModelShape(  # Return of the Encoder (arXiv 2501.16273), papers.md section 4
        name="encdec-330m", dim=1024, n_layers=10, n_encoder_layers=20, n_heads=6, n_kv_heads=3,
        head_dim=64, hidden_dim=4096, vocab_size=32128, max_seq_len=2048, tie_embeddings=True,
        ffn_gated=False),
    "blockffn-small": ModelShape(  # BlockFFN Small (arXiv 2507.08771), papers.md section 2
        name="blockffn-small", dim=768, n_layers=16, n_heads=12, n_kv_heads=12, head_dim=64,
        hidden_dim=48 * 64, vocab_size=32000, max_seq_len=2048, tie_embeddings=True,
        ffn_gated=False, n_experts=48, active_fraction=1 - 0.805),
}


# --- weight format ----------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightFormat:
    """How weights are stored.

    ``bits`` >= 16 means float weights of ``bits/8`` bytes (no scales). Integer formats store
    ``bits`` per weight plus ``scale_bytes + offset_bytes`` per group of ``group_size`` inputs
    (``None``: one group per output row). ``float_bytes`` is the dtype of everything left
    unquantized (embedding, norms, biases, routers). ``lm_head``: ``"quantized"`` (its own
    quantized matrix; for tied models an extra copy next to the float embedding) or ``"float"``
    (for tied models: shares the embedding, no extra bytes). ``embedding_bits``: quantize the
    embedding table too (None: keep it float).
    """

    bits: int = 16
    group_size: int | None = None
    scale_bytes: int = 2
    offset_bytes: int = 2
    float_bytes: int = 2
    lm_head: Literal["quantized", "float"] = "quantized"
    embedding_bits: int | None = None

    def __post_init__(self) -> None:
        if self.bits not in (1, 2, 3, 4, 5, 6, 8, 16, 32):
            raise UserError(f"unsupported weight bit width {self.bits}", "use 2, 3, 4, 8, 16 or 32")
        if self.group_size is not None and self.group_size <= 0:
            raise UserError(f"group size must be positive, got {self.group_size}",
                            "use e.g. 32, 64 or 128, or None for per-channel")

    @classmethod
    def from_preset(cls, preset: str | QuantPreset, *, float_bytes: int | None = None,
                    lm_head: Literal["quantized", "float"] = "quantized") -> "WeightFormat":
        """The format of a named preset. Float presets store everything in their own dtype."""
        p = get_preset(preset) if isinstance(preset, str) else preset
        if p.is_float:
            return cls(bits=p.bits, group_size=None, scale_bytes=0, offset_bytes=0,
                       float_bytes=p.bits // 8, lm_head="float")
        return cls(bits=p.bits, group_size=p.group_size, scale_bytes=p.scale_bytes,
                   offset_bytes=p.offset_bytes, float_bytes=4 if float_bytes is None else float_bytes,
                   lm_head=lm_head)

    @property
    def is_float(self) -> bool:
        return self.bits >= 16


def matrix_bytes(out_features: int, in_features: int, bits: int, group_size: int | None = None,
                 scale_bytes: int = 2, offset_bytes: int = 2) -> int:
    """Stored bytes of one ``[out, in]`` weight matrix.

    Float (``bits >= 16``): ``out*in*bits/8``. Integer: :mod:`edgekit.quant.layout`'s packed
    format when it applies (fp16 scale + fp16 offset: ``Layout.bytes_for``, rows padded to whole
    groups and bytes); otherwise the same rule with other metadata sizes.

    >>> matrix_bytes(4096, 4096, 2, 64)   # 2.5 bits/weight
    5242880
    """
    if bits >= 16:
        return out_features * in_features * bits // 8
    lay = _layout(bits, group_size)
    if lay is not None and scale_bytes == 2 and offset_bytes == 2:
        return lay.bytes_for(out_features, in_features)
    g = group_size or in_features
    n_groups = -(-in_features // g)
    row = -(-n_groups * g * bits // 8)
    return out_features * (row + n_groups * (scale_bytes + offset_bytes))


def _layout(bits: int, group_size: int | None) -> Layout | None:
    return Layout(bits, group_size) if bits in SUPPORTED_BITS else None


def _fmt_matrix(out_f: int, in_f: int, fmt: WeightFormat) -> int:
    return matrix_bytes(out_f, in_f, fmt.bits, fmt.group_size, fmt.scale_bytes, fmt.offset_bytes)


def weight_terms(shape: ModelShape, fmt: WeightFormat) -> dict[str, int]:
    """Weight bytes by role: ``weights.embedding``, ``.lm_head``, ``.linear``, ``.norm``,
    ``.bias``, ``.router`` (zero terms omitted except embedding and linear)."""
    V, d = shape.vocab_size, shape.dim
    if fmt.embedding_bits is not None and fmt.embedding_bits < 16:
        emb = matrix_bytes(V, d, fmt.embedding_bits, fmt.group_size or 32, fmt.scale_bytes, fmt.offset_bytes)
    else:
        emb = V * d * fmt.float_bytes
    if fmt.is_float or fmt.lm_head == "float":
        head = 0 if (shape.tie_embeddings and fmt.embedding_bits is None) else V * d * fmt.float_bytes
    else:
        head = _fmt_matrix(V, d, fmt)
    linear = sum(_fmt_matrix(o, i, fmt) * n for mats, n in shape.linear_groups().values() for o, i in mats)
    terms = {"weights.embedding": emb, "weights.lm_head": head, "weights.linear": linear}
    for k, n in shape.n_float().items():
        if n:
            terms[f"weights.{k}"] = n * fmt.float_bytes
    if not head:
        del terms["weights.lm_head"]
    return terms


def weight_bytes(shape: ModelShape, fmt: WeightFormat) -> int:
    """Total weight bytes of ``shape`` stored as ``fmt``."""
    return sum(weight_terms(shape, fmt).values())


def decode_weight_read_bytes(shape: ModelShape, fmt: WeightFormat, active_fraction: float | None = None) -> int:
    """Weight bytes one decode step streams from memory: the decoder's linear matrices, the LM
    head (the float embedding when shared), norms, biases, routers, one embedding row.

    BlockFFN reads only the ``active_fraction`` of its FFN rows; an encoder-decoder reads the
    decoder and the q/o projections of cross-attention (the encoder and the cross K/V
    projections run once per prompt).
    """
    frac = shape.active_fraction if active_fraction is None else active_fraction
    att = sum(_fmt_matrix(o, i, fmt) for o, i in shape.attention_matrices())
    ffn = sum(_fmt_matrix(o, i, fmt) for o, i in shape.ffn_matrices())
    cross = 0
    if shape.is_encoder_decoder:
        q, _, _, o = shape.attention_matrices()
        cross = _fmt_matrix(*q, fmt) + _fmt_matrix(*o, fmt)
    terms = weight_terms(shape, fmt)
    head = terms.get("weights.lm_head") or shape.vocab_size * shape.dim * fmt.float_bytes
    small = sum(v for k, v in terms.items() if k.endswith((".norm", ".bias", ".router")))
    return int(shape.n_layers * (att + cross + ffn * frac)) + head + small + shape.dim * fmt.float_bytes


def kv_cache_bytes(shape: ModelShape, context: int, kv_bytes: float = 2, batch: int = 1,
                   layers: int | None = None) -> int:
    """``2 * L * d_kv * b_kv * B * S``: K and V rows for ``context`` positions."""
    L = shape.n_layers if layers is None else layers
    return int(2 * L * shape.kv_dim * kv_bytes * batch * context)


# --- speculative drafts -----------------------------------------------------------------------

DraftKind = Literal["none", "model", "early-exit", "self-quant", "medusa", "lookup"]


@dataclass(frozen=True)
class Draft:
    """A speculative-decoding drafter.

    ``length`` (k): tokens drafted per step; a chain verifies ``T = k + 1`` tokens (the last
    accepted token plus k candidates). ``tree_size`` overrides T for tree verification (Medusa).
    ``exit_layer``: early-exit depth. ``bits``: self-quant width. ``heads``: Medusa heads.
    ``shape``/``fmt``: a separate draft model.
    """

    kind: DraftKind = "none"
    length: int = 0
    exit_layer: int = 0
    bits: int = 0
    heads: int = 0
    tree_size: int | None = None
    shape: ModelShape | None = None
    fmt: WeightFormat | None = None
    name: str = ""

    @property
    def verify_tokens(self) -> int:
        """T: tokens in one verification forward (1 without speculation)."""
        if self.kind == "none":
            return 1
        return self.tree_size or (self.length + 1)

    @property
    def is_tree(self) -> bool:
        return self.kind == "medusa" or self.tree_size is not None

    @property
    def label(self) -> str:
        """The CLI spelling: ``none``, ``early-exit:8``, ``self-quant:4``, ``medusa:3``, a model name."""
        return {"none": "none", "early-exit": f"early-exit:{self.exit_layer}",
                "self-quant": f"self-quant:{self.bits}", "medusa": f"medusa:{self.heads}",
                "model": self.name or (self.shape.name if self.shape else "model")}[self.kind]


NO_DRAFT = Draft()


def self_quant_format(bits: int, target: WeightFormat) -> WeightFormat:
    """The format of a quantized self-draft: the target's layout at ``bits`` (group 64 for
    2/3 bits, 32 for 4, per-channel for 8)."""
    group = {2: 64, 3: 64, 4: 32}.get(bits)
    return WeightFormat(bits=bits, group_size=group, float_bytes=target.float_bytes,
                        lm_head=target.lm_head)


def draft_weight_bytes(draft: Draft, target: ModelShape, fmt: WeightFormat) -> int:
    """Extra weight bytes the drafter adds. Early exit reuses the target's layers and head (0);
    a self-quant draft is a quantized copy of the linear layers and LM head sharing the
    embedding; Medusa heads are ``K (d^2 + d + d V)`` parameters in the target's format."""
    if draft.kind in ("none", "early-exit", "lookup"):  # lookup: a search over the context, no model
        return 0
    if draft.kind == "self-quant":
        dfmt = self_quant_format(draft.bits, fmt)
        t = weight_terms(target, dfmt)
        return t["weights.linear"] + _fmt_matrix(target.vocab_size, target.dim, dfmt)
    if draft.kind == "medusa":
        d, V = target.dim, target.vocab_size
        per_head = _fmt_matrix(d, d, fmt) + d * fmt.float_bytes + _fmt_matrix(V, d, fmt)
        return draft.heads * per_head
    assert draft.shape is not None
    return weight_bytes(draft.shape, draft.fmt or fmt)


# --- runtime overhead -------------------------------------------------------------------------

# Peak RSS of the process that runs a model, without the model: on the edgekit dev machine
# (x86_64 KVM, Python 3.11, torch 2.13.0+cpu, executorch 1.5.1, onnxruntime 1.32.0), measured with
# wait4 ru_maxrss. The Python rows are `edgekit run` itself, which imports torch for every backend
# (its engine works on torch tensors), on stories260K (a 1.3 MB program) minus that model's own
# modelled terms (~2.5 MiB), so they include the working set of a first generation (kernel code
# pages touched, allocator and threadpool arenas): bare imports are 366,484 KB (torch +
# executorch.runtime + the edgekit CLI) and 248,828 KB (torch + onnxruntime + the CLI), loading and
# running the program adds ~15 MB / ~24 MB more. Re-measure with measure_process_baseline() (imports
# only) or benchmarks/bench_plan_vs_measured.py on the target machine.
PROCESS_BASELINE: dict[tuple[str, str], tuple[int, str]] = {
    ("python", "executorch"): (381_200 * 1024, "measured: `edgekit run` on stories260K, peak RSS 383,784 KB "
                               "minus the model's 2.5 MiB (torch 2.13 CPU, executorch 1.5.1, XNNPACK)"),
    ("python", "torch"): (223_528 * 1024, "measured: python -c 'import torch' peak RSS 223,528 KB"),
    ("python", "onnxruntime"): (272_600 * 1024, "measured: `edgekit run --backend onnx` on stories260K, peak "
                                "RSS 274,964 KB minus the model's 2.3 MiB (imports torch too; onnxruntime 1.32)"),
    ("native", "executorch"): (12 * MIB, "estimate: ExecuTorch C++ runner binary + libc (~8-16 MB)"),
    ("native", "onnxruntime"): (30 * MIB, "estimate: libonnxruntime.so mapped + C API runner"),
    ("native", "torch"): (120 * MIB, "estimate: libtorch_cpu mapped by a C++ runner"),
}

# Of the Python rows above, the file-backed pages of the mapped shared libraries (libtorch_cpu.so,
# libtorch_python.so, the executorch or onnxruntime libraries, libpython, numpy's OpenBLAS): the
# RssFile of the same runs (RunStats.file_rss). They are clean, shared page cache, and how many of
# them the kernel maps depends on the page cache, not on the program: these values are for
# libraries faulted in from small page-cache folios (the usual state); right after the libraries
# were read or written sequentially (a fresh `pip install`, as in CI, or `cat`) they sit in large
# folios and each fault maps more of them: the same runs measured 179 MiB (executorch) and 190 MiB
# (onnxruntime) of library pages then, peak RSS 460 / 356 MiB, with the anonymous memory the same to
# 1 MiB. Measured peaks are therefore compared without them (RunStats.private_peak against the
# prediction minus these).
PROCESS_LIBRARY_PAGES: dict[tuple[str, str], tuple[int, str]] = {
    ("python", "executorch"): (95_950 * 1024, "measured: RssFile of `edgekit run` on stories260K, 93.7 MiB "
                               "(179 MiB with the libraries freshly read into large page-cache folios)"),
    ("python", "onnxruntime"): (106_500 * 1024, "measured: RssFile of `edgekit run --backend onnx` on "
                                "stories260K, 104.0 MiB (190 MiB with freshly read libraries)"),
}

# Device-side context of a discrete GPU runtime (counted against GPU memory).
GPU_CONTEXT: dict[str, tuple[int, str]] = {
    "cuda": (512 * MIB, "estimate: CUDA 12 context with lazy loading ~300-400 MB + cuBLAS workspace"),
    "rocm": (768 * MIB, "estimate: HIP context + rocBLAS/hipBLASLt workspaces"),
    "vulkan": (96 * MIB, "estimate: Vulkan device, pipelines and staging buffers"),
    "mps": (160 * MIB, "estimate: Metal device, command queues and MPSGraph caches"),
    "qnn": (64 * MIB, "estimate: QNN HTP context + shared buffers (rpcmem)"),
    "coreml": (96 * MIB, "estimate: Core ML model instance + ANE program"),
}

# What an ExecuTorch/XNNPACK program holds beyond the weights, measured on the edgekit dev
# machine (executorch 1.5.1 Python runtime, fp32 Llama-shaped .pte files, peak RSS minus the
# 354 MiB import baseline; see tests/test_memory_model.py::test_xnnpack_calibration_points):
#   56M params, untied (embedding 62.5 MiB, delegated 151 MiB): peak 648 MiB
#   33M params, untied, vocab 128000 (embedding 125 MiB, delegated 131 MiB): peak 739 MiB
#   the same model with tied embeddings: .pte just as large, peak 739 MiB
#   110M params, vocab 4000 (embedding 15.6 MiB, delegated 375 MiB): peak 764 MiB
# Delegated weights are packed once (~1.0x); the embedding table, which runs outside the delegate,
# is resident twice at the first execution; a tied head is exported as a second, delegated copy.
EMBEDDING_COPIES: dict[str, tuple[float, str]] = {
    "xnnpack": (1.0, "measured: the non-delegated embedding table is resident twice at peak "
                     "(executorch 1.5.1, XNNPACK, Python runtime)"),
}
# A second resident copy of the KV cache, by engine. ExecuTorch: the exported cache update
# (index_put) writes each layer's new cache into its own planned buffer, returned as the mutated
# buffer, so both copies stay resident; ONNX (edgekit's concat-KV program): the past fed in and the
# present returned are both alive during a step.
KV_COPIES: dict[str, tuple[float, str]] = {
    "executorch": (1.0, "measured: SmolLM2-135M fp32 XNNPACK .pte at max_seq_len 256 vs 1024: peak and "
                        "steady RSS +67.8 MiB for +33.75 MiB of KV cache (executorch 1.5.1, Python runtime)"),
    "onnxruntime": (1.0, "concat-KV program: past inputs and present outputs alive together during a step "
                         "(by construction; not separately measured)"),
}
TIED_HEAD_COPY_SOURCE = ("measured: ExecuTorch exports a tied LM head as its own delegated copy "
                         "(tied and untied .pte files have the same size and peak RSS)")


@dataclass(frozen=True)
class RuntimeSpec:
    """The process that runs the model, for the runtime overhead terms.

    ``runtime``: ``"python"`` (the edgekit CLI / Python bindings) or ``"native"`` (a C++ runner).
    ``engine``: ``executorch``, ``onnxruntime`` or ``torch`` (eager). ``backend`` picks the GPU
    context and the ExecuTorch delegate's extra copies. ``allocator_fraction``: slack of the
    allocator on the dynamic allocations (KV, activations, logits). Override ``base_bytes`` /
    ``embedding_copies`` to calibrate.
    """

    runtime: Literal["python", "native"] = "python"
    engine: Literal["executorch", "onnxruntime", "torch"] = "executorch"
    backend: str = "xnnpack"
    allocator_fraction: float = 0.05
    base_bytes: int | None = None
    embedding_copies: float | None = None
    gpu_pool: bool = False  # the budget is a discrete GPU's memory (host process not counted)

    def base(self) -> tuple[int, str]:
        if self.base_bytes is not None:
            return self.base_bytes, "calibrated"
        try:
            return PROCESS_BASELINE[(self.runtime, self.engine)]
        except KeyError:
            raise UserError(f"no process baseline for runtime={self.runtime!r} engine={self.engine!r}",
                            "use runtime python|native and engine executorch|onnxruntime|torch") from None

    def library_pages(self) -> int:
        """The part of :meth:`base` that is file-backed shared-library pages
        (:data:`PROCESS_LIBRARY_PAGES`); 0 for a calibrated ``base_bytes`` or an unmeasured row."""
        if self.base_bytes is not None:
            return 0
        return PROCESS_LIBRARY_PAGES.get((self.runtime, self.engine), (0, ""))[0]

    @property
    def delegated(self) -> bool:
        """An ExecuTorch program lowered to a delegate that repacks weights (XNNPACK)."""
        return self.engine == "executorch" and self.backend in EMBEDDING_COPIES

    def embedding_copy_factor(self) -> float:
        if self.embedding_copies is not None:
            return self.embedding_copies
        return EMBEDDING_COPIES[self.backend][0] if self.delegated else 0.0


def measure_process_baseline(imports: str = "torch, executorch.runtime") -> int:
    """Peak RSS in bytes of a fresh ``python -c 'import <imports>'`` (Linux ``ru_maxrss``).

    Use it to calibrate :class:`RuntimeSpec` ``base_bytes`` on the machine that will run the
    model. Raises ``UserError`` when the import fails.
    """
    code = (f"import {imports}\nimport resource, json\n"
            "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise UserError(f"cannot import {imports!r} to measure the process baseline",
                        r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "check the environment")
    return int(json.loads(r.stdout.strip().splitlines()[-1])) * 1024


# --- activations ------------------------------------------------------------------------------

def forward_activation_bytes(shape: ModelShape, tokens: int, attend: int, act_bytes: float = 4,
                             batch: int = 1, bidirectional: bool = False) -> int:
    """Peak live activations of one layer for a ``tokens``-token forward attending ``attend``
    positions (layers run one after another, so one layer's peak is the forward's peak).

    Live at once: the residual stream and its normed copy, then either attention (q, k, v and
    their RoPE'd copies, scores + masked scores + fp32 softmax over ``attend`` positions, the
    ``T x S`` additive mask, the output) or the FFN (gate, up, and their product), whichever is
    larger.
    """
    T, a = tokens * batch, act_bytes
    resid = 3 * T * shape.dim * a  # residual, normed input, block output
    qkv = 2 * T * (shape.q_dim + 2 * shape.kv_dim) * a
    scores = 2 * shape.n_heads * T * attend * a + shape.n_heads * T * attend * 4
    mask = 0 if bidirectional else tokens * attend * 4
    attn = qkv + scores + mask + T * shape.q_dim * a
    ffn = (3 if shape.ffn_gated else 2) * T * shape.hidden_dim * a
    return int(resid + max(attn, ffn))


# --- the breakdown ----------------------------------------------------------------------------

@dataclass
class MemoryBreakdown:
    """Named byte counts. ``weights``: the ``weights.*`` terms; ``generation``: all the rest."""

    terms: dict[str, int]
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def weights(self) -> int:
        return sum(v for k, v in self.terms.items() if k.startswith("weights."))

    @property
    def generation(self) -> int:
        return self.total - self.weights

    def to_dict(self) -> dict:
        return {"terms": dict(self.terms), "total": self.total, "weights": self.weights,
                "generation": self.generation, "notes": dict(self.notes)}


def estimate_memory(shape: ModelShape, fmt: WeightFormat, *, context: int,
                    kv_bytes: float = 2, act_bytes: float = 4, batch: int = 1,
                    draft: Draft = NO_DRAFT, prefill_chunk: int = 128, logits_all: bool = True,
                    sampling: bool = False, encoder_len: int | None = None,
                    runtime: RuntimeSpec | None = RuntimeSpec()) -> MemoryBreakdown:
    """Peak bytes to generate with ``shape`` stored as ``fmt`` under a ``context``-token KV cache.

    Args:
        context: KV rows allocated per sequence (S_alloc: prompt + new tokens; SpecMemo sizes it
            to the conversation, not the model's maximum). For an encoder-decoder it is
            ``S_in + S_out``, split by ``encoder_len`` (default half).
        kv_bytes / act_bytes: bytes per KV element / per activation element.
        draft: the speculative drafter (``NO_DRAFT`` for plain decoding).
        prefill_chunk: tokens per prefill forward; with ``logits_all`` the model returns logits
            for every token of a forward (as ``edgekit.models.llama.Transformer`` does).
        sampling: add the fp32 softmax copy of the logits and keep the draft's k distributions.
        runtime: process/runtime overhead; ``None`` leaves the runtime terms out.

    Returns:
        A :class:`MemoryBreakdown`; every term is a named line.

    Raises:
        UserError: a draft that does not fit the target (early exit past the last layer, ...).
    """
    if context <= 0:
        raise UserError(f"context must be positive, got {context}", "pass --context N with N >= 1")
    B, V = batch, shape.vocab_size
    T = draft.verify_tokens
    terms: dict[str, int] = dict(weight_terms(shape, fmt))
    notes: dict[str, str] = {}

    # KV cache (SpecMemo: sized to the context actually needed).
    if shape.is_encoder_decoder:
        s_in = context // 2 if encoder_len is None else encoder_len
        s_out = max(context - s_in, 1)
        terms["kv_cache"] = kv_cache_bytes(shape, s_out, kv_bytes, B)
        terms["kv_cache.cross"] = kv_cache_bytes(shape, s_in, kv_bytes, B)
        notes["kv_cache.cross"] = f"cross-attention K/V of {s_in} encoder positions, computed once"
    else:
        s_in, s_out = 0, context
        terms["kv_cache"] = kv_cache_bytes(shape, context, kv_bytes, B)

    # Speculative decoding.
    if draft.kind != "none":
        if draft.length < 1 and not draft.tree_size:
            raise UserError("a speculative draft needs a draft length >= 1", "pass --draft-length K")
        if draft.kind == "early-exit" and not 1 <= draft.exit_layer < shape.n_layers:
            raise UserError(f"early exit at layer {draft.exit_layer} is outside 1..{shape.n_layers - 1}",
                            f"use early-exit:K with K < {shape.n_layers}")
        if draft.kind == "model" and draft.shape is not None and draft.shape.vocab_size != V:
            raise UserError(f"draft vocabulary {draft.shape.vocab_size} differs from the target's {V}",
                            "a draft model must share the target's tokenizer")
        terms["weights.draft"] = draft_weight_bytes(draft, shape, fmt)
        k = max(draft.length, 1)
        if draft.kind == "model":
            assert draft.shape is not None
            terms["kv_cache.draft"] = kv_cache_bytes(draft.shape, context + k, kv_bytes, B)
        elif draft.kind == "self-quant":
            terms["kv_cache.draft"] = kv_cache_bytes(shape, context + k, kv_bytes, B)
        # early exit shares the target's first layers' cache; Medusa heads read the last hidden state
        terms["spec.candidate_tail"] = kv_cache_bytes(shape, T, kv_bytes, B)
        if draft.is_tree:
            terms["spec.tree_mask"] = T * T * B
        heads = draft.heads if draft.kind == "medusa" else 0
        terms["logits.verify"] = int(B * T * V * 4 * (1 + heads))
        if draft.kind not in ("medusa", "lookup"):
            terms["logits.draft"] = int(B * (k if sampling else 1) * V * 4)
    # Logits of the largest forward: a prefill chunk returns logits for all its tokens.
    prefill_T = min(prefill_chunk, context)
    terms["logits"] = int(B * (prefill_T if logits_all else 1) * V * 4)
    if sampling:
        terms["logits.softmax_fp32"] = int(B * max(T, 1) * V * 4)

    # Activations of the largest forward: a prefill chunk, a T-token verify, or the encoder.
    fwd = max(forward_activation_bytes(shape, prefill_T if not shape.is_encoder_decoder else 1,
                                       s_out, act_bytes, B),
              forward_activation_bytes(shape, T, s_out + T, act_bytes, B))
    if shape.is_encoder_decoder:
        fwd = max(fwd, forward_activation_bytes(shape, s_in, s_in, act_bytes, B, bidirectional=True))
    if draft.kind == "model" and draft.shape is not None:
        fwd = max(fwd, forward_activation_bytes(draft.shape, prefill_T, context, act_bytes, B))
    terms["activations"] = fwd
    # Static buffers of the program: RoPE cos/sin tables and the slot index.
    terms["buffers"] = int(shape.max_seq_len * (shape.head_dim * 4 + 8))

    if runtime is not None:
        dynamic = sum(v for kk, v in terms.items() if not kk.startswith(("weights.", "buffers")))
        terms["runtime.allocator"] = int(dynamic * runtime.allocator_fraction)
        kv_copy, kv_src = KV_COPIES.get(runtime.engine, (0.0, ""))
        if kv_copy and not runtime.gpu_pool:
            terms["runtime.kv_copy"] = int(terms["kv_cache"] * kv_copy)
            notes["runtime.kv_copy"] = kv_src
        copies = runtime.embedding_copy_factor()
        if copies:
            terms["runtime.embedding_copy"] = int(terms["weights.embedding"] * copies)
            notes["runtime.embedding_copy"] = EMBEDDING_COPIES.get(runtime.backend, (0, "calibrated"))[1]
        if runtime.delegated and shape.tie_embeddings and "weights.lm_head" not in terms:
            terms["runtime.tied_head_copy"] = V * shape.dim * fmt.float_bytes
            notes["runtime.tied_head_copy"] = TIED_HEAD_COPY_SOURCE
        if runtime.gpu_pool:
            ctx, src = GPU_CONTEXT.get(runtime.backend, (0, ""))
            terms["runtime.gpu_context"] = ctx
            notes["runtime.gpu_context"] = src
        else:
            base, src = runtime.base()
            terms["runtime.process"] = base
            notes["runtime.process"] = src
            if runtime.backend in GPU_CONTEXT and runtime.backend not in ("xnnpack", "onnxruntime"):
                ctx, src2 = GPU_CONTEXT[runtime.backend]
                terms["runtime.gpu_context"] = ctx  # unified memory: the context lives in RAM too
                notes["runtime.gpu_context"] = src2
    return MemoryBreakdown(terms=terms, notes=notes)
