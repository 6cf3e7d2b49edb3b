"""Speed model: a roofline per forward, plus speculative decoding and BlockFFN sparsity.

A forward of ``T`` tokens streams the weights it touches and the KV cache it attends to, and
does ``2 * params * T`` FLOPs plus attention. Its time is
``max(bytes / (bandwidth * eff_bw), flops / (compute * eff_compute)) + dispatch overhead``
(per layer, plus a per-attention-score cost where measured),
where bandwidth and compute come from the profile's *measured* numbers when it has them and
from the datasheet otherwise (datasheet bandwidth is first scaled by :data:`STREAM_FRACTION`,
since no program streams at the theoretical DRAM peak). ``eff_*`` is the documented share of
the roofline a backend's kernels reach (:data:`BACKENDS`).

Speculative decoding (Leviathan et al. 2023): with per-token acceptance ``alpha`` and ``k``
drafted tokens, a step yields ``E = (1 - alpha^(k+1)) / (1 - alpha)`` tokens, and with a draft
costing ``c`` target steps per token the speedup is ``E / (k c + 1)``
(:func:`speculative_speedup`). :func:`decode_speed` uses the roofline instead of the ``+1`` so
that verifying ``k+1`` tokens costs what it really costs (free while memory-bound, not when
compute-bound).

BlockFFN (papers.md section 2): a token reads only its active experts' FFN rows; ``T`` tokens
verified together read the union of their experts, which grows as ``a1 * T**0.184`` (fitted to
BlockFFN-Small: 19.5% active per token, 28.6% per 8-token chunk).

Example::

    from edgekit.profile import find_profile
    from edgekit.plan.roofline import resolve_target, speculative_speedup
    tgt = resolve_target(find_profile("rtx-4090"), "cuda")
    tgt.bandwidth / 1e9          # 1008 * 0.85 GB/s (datasheet x STREAM fraction)
    speculative_speedup(0.8, 4, 0.05)   # 2.8
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from edgekit.errors import UserError
from edgekit.plan.memory import ModelShape, WeightFormat, decode_weight_read_bytes, kv_cache_bytes
from edgekit.profile.schema import GIB, DeviceProfile

# Datasheet DRAM bandwidth -> what a streaming kernel achieves (STREAM triad / peak is 0.6-0.9
# on DDR/LPDDR systems and 0.85-0.93 on HBM/GDDR GPUs; we take the middle of both ranges).
STREAM_FRACTION = {"cpu": 0.7, "gpu": 0.85, "npu": 0.7}
STREAM_SOURCE = "datasheet peak x STREAM fraction (0.7 CPU/NPU LPDDR/DDR, 0.85 GPU GDDR/HBM)"

# A step whose bytes fit in half the CPU's last-level cache is read from the cache, not DRAM.
# Estimate: L3 read bandwidth per core is ~3-5x the DRAM share of a core on current x86/Arm cores
# (Zen 4, Golden Cove, Cortex-X); we take 4x.
LLC_FACTOR = 4.0

# BlockFFN union-of-experts growth exponent, from TLS 80.5% and CLS_8 71.4% (papers.md sec. 2).
BLOCKFFN_UNION_EXPONENT = math.log((1 - 0.714) / (1 - 0.805)) / math.log(8)


@dataclass(frozen=True)
class BackendInfo:
    """What a backend runs on and how close to the roofline its kernels get.

    ``eff_bw``: share of the (measured or STREAM-scaled) bandwidth a decode step reaches.
    ``eff_compute``: share of peak matmul throughput a prefill reaches. ``layer_overhead_s``:
    dispatch cost per layer per forward (kernel launches, thread-pool wake-ups). ``presets``:
    weight formats the backend has kernels for. ``float_dtype`` / ``kv_dtype``: the defaults the
    planner uses. ``source``: where the numbers come from. ``score_s``: seconds per attention
    score (one query token x one head x one attended position x one layer) spent outside the
    roofline: the scale, mask, softmax and the two small per-head bmm's over the scores, which run
    as many tiny operators far below peak (0: not measured for this backend).
    """

    kind: Literal["cpu", "gpu", "npu"]
    eff_bw: float
    eff_compute: float
    layer_overhead_s: float
    presets: frozenset[str]
    float_dtype: str
    kv_dtype: str
    source: str
    score_s: float = 0.0


_ALL = frozenset({"w2g64", "w2g128", "w3g64", "w4g32", "w4g128", "w8", "fp16", "fp32"})

BACKENDS: dict[str, BackendInfo] = {
    "xnnpack": BackendInfo(
        "cpu", 0.75, 0.6, 13.6e-6, _ALL, "fp32", "fp32",
        "llama.cpp/ExecuTorch CPU decode reaches 60-85% of STREAM bandwidth; XNNPACK GEMM ~60% of "
        "measured peak; 2/3-bit through edgekit's own CPU kernels. Checked by "
        "benchmarks/bench_plan_vs_measured.py (edgekit run/bench, 1 thread, AMD EPYC 2-core KVM, idle: "
        "load 0.7, bench CPU share 1.0): fp32 SmolLM2-135M decode streamed 0.85-0.95 of the best "
        "streaming rate (0.75 kept: phones and shared hosts reach less). layer_overhead_s 13.6 us and "
        "score_s 3.0 ns solved from stories260K's step times at S=256 and S=1024 (111 and 211 us; its "
        "1.3 MB of weights stay in the LLC) on the idle host; a run at load 6-11 had measured 15 us and 6.5 ns",
        score_s=3.0e-9),
    "onnxruntime": BackendInfo(
        "cpu", 0.6, 0.5, 33e-6, frozenset({"w4g32", "w4g128", "w8", "fp16", "fp32"}), "fp32", "fp32",
        "ORT CPU EP MatMulNBits (4-bit) / int8 MatMulInteger; estimate: less fused than XNNPACK. "
        "layer_overhead_s measured: stories260K through edgekit's Python ORT backend (past K/V fed "
        "and returned as numpy arrays per layer), 181 us per 5-layer step at 1 thread on an idle "
        "2-core host, the same at S=256 and 1024 (~260 us at load 6-11)"),
    "cuda": BackendInfo(
        "gpu", 0.8, 0.6, 40e-6, _ALL, "fp16", "fp16",
        "gpt-fast / llama.cpp int4 GEMV reach 80-90% of HBM/GDDR peak; ~8 launches x 5 us per layer"),
    "rocm": BackendInfo(
        "gpu", 0.7, 0.5, 60e-6, _ALL, "fp16", "fp16",
        "estimate: HIP kernels reach a little less of peak than CUDA; longer launches"),
    "vulkan": BackendInfo(
        "gpu", 0.5, 0.3, 100e-6, frozenset({"w4g32", "w4g128", "w8", "fp16", "fp32"}), "fp16", "fp16",
        "estimate: mobile GPU LLM decode (MLC/ExecuTorch Vulkan) reaches about half of DRAM bandwidth"),
    "mps": BackendInfo(
        "gpu", 0.7, 0.5, 60e-6, frozenset({"w4g32", "w4g128", "w8", "fp16", "fp32"}), "fp16", "fp16",
        "MLX/llama.cpp Metal decode reaches ~70% of unified-memory bandwidth"),
    "qnn": BackendInfo(
        "npu", 0.6, 0.3, 30e-6, frozenset({"w4g32", "w4g128", "w8", "fp16"}), "fp16", "fp16",
        "estimate: Qualcomm HTP LLM decode; int4/int8 block quantization only"),
    "coreml": BackendInfo(
        "npu", 0.5, 0.3, 50e-6, frozenset({"w4g32", "w4g128", "w8", "fp16"}), "fp16", "fp16",
        "estimate: ANE decode is bandwidth-limited and pays CPU<->ANE hand-offs"),
}


def backend_info(name: str) -> BackendInfo:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UserError(f"unknown backend {name!r}", f"use one of {', '.join(BACKENDS)}") from None


@dataclass
class Target:
    """One backend of one device, resolved to numbers (bytes/s, ops/s, bytes)."""

    device: str
    backend: str
    info: BackendInfo
    bandwidth: float  # achievable streaming bandwidth before the backend's efficiency
    compute: dict[str, float]  # dtype -> peak ops/s
    memory_bytes: int  # the pool a plan must fit in
    unified: bool
    session_limit_bytes: int | None = None
    threads: int | None = None
    sources: dict[str, str] = field(default_factory=dict)
    llc_bytes: int | None = None  # CPU last-level cache: a step whose bytes fit stays cache-resident

    def to_dict(self) -> dict:
        return {"device": self.device, "backend": self.backend, "kind": self.info.kind,
                "bandwidth_gbps": self.bandwidth / 1e9,
                "compute_gops": {k: v / 1e9 for k, v in self.compute.items()},
                "memory_bytes": self.memory_bytes, "unified": self.unified,
                "session_limit_bytes": self.session_limit_bytes, "threads": self.threads,
                "llc_bytes": self.llc_bytes,
                "efficiency": {"bandwidth": self.info.eff_bw, "compute": self.info.eff_compute,
                               "layer_overhead_s": self.info.layer_overhead_s, "score_s": self.info.score_s,
                               "source": self.info.source},
                "sources": dict(self.sources)}


def _cpu_flops_per_cycle(isa: set[str], arch: str) -> tuple[float, float]:
    """(fp32, int8) ops per cycle per core implied by the ISA (2 FMA pipes assumed)."""
    if "avx512f" in isa:
        fp32 = 64.0
    elif "avx2" in isa or "fma" in isa:
        fp32 = 32.0
    elif arch == "arm64":
        fp32 = 16.0
    else:
        fp32 = 8.0
    int8 = fp32 * (8 if "i8mm" in isa or "amx_int8" in isa else
                   4 if {"dotprod", "avx512_vnni", "avx_vnni"} & isa else 2)
    return fp32, int8


def _cpu_target(p: DeviceProfile, backend: str, info: BackendInfo, threads: int | None) -> Target:
    src: dict[str, str] = {}
    cores = p.cpu.cores
    use = min(threads or cores, cores)
    m = p.measured
    bw = measured_stream_gbps(m, use) if m else None
    if bw:
        src["bandwidth"] = (f"best measured streaming rate (read, copy, fp32 GEMV) at <= {use} threads "
                            f"({m.tool}, {m.date})")
        bw *= 1e9
    elif p.memory.bandwidth_gbps:
        bw = p.memory.bandwidth_gbps.value * 1e9 * STREAM_FRACTION["cpu"]
        src["bandwidth"] = f"{STREAM_SOURCE}; peak: {p.memory.bandwidth_gbps.source}"
    else:
        raise UserError(f"device {p.name} has neither a measured nor a datasheet memory bandwidth",
                        "add memory.bandwidth_gbps to the profile or run `edgekit profile` on it")
    compute: dict[str, float] = {}
    for dtype in ("fp32", "int8", "fp16"):
        g = m.best_compute_gflops("gemm", dtype, use) if m else None
        if g:
            compute[dtype] = g * 1e9
            src[f"compute.{dtype}"] = f"measured {dtype} GEMM at <= {use} threads"
    if "fp32" not in compute or "int8" not in compute:
        # Datasheet/ISA estimate from the fastest ``use`` cores.
        isa = set(p.cpu.isa)
        f32, i8 = _cpu_flops_per_cycle(isa, p.cpu.arch)
        left, cyc = use, 0.0
        for c in sorted(p.cpu.clusters, key=lambda c: -(c.max_freq_ghz.value if c.max_freq_ghz else 2.0)):
            n = min(left, c.cores)
            cyc += n * (c.max_freq_ghz.value if c.max_freq_ghz else 2.0) * 1e9
            left -= n
        if p.cpu.peak_fp32_gflops and use >= cores:
            est32 = p.cpu.peak_fp32_gflops.value * 1e9
            src.setdefault("compute.fp32", f"datasheet: {p.cpu.peak_fp32_gflops.source}")
        else:
            est32 = cyc * f32
            src.setdefault("compute.fp32", "estimate: cores x max GHz x FLOP/cycle from the ISA")
        compute.setdefault("fp32", est32)
        compute.setdefault("int8", est32 * i8 / f32)
        src.setdefault("compute.int8", "estimate: fp32 peak x int8/fp32 width ratio of the ISA")
    if "fp16" not in compute:
        compute["fp16"] = compute["fp32"] * (2 if p.cpu.arch == "arm64" and "fp16" in p.cpu.isa else 1)
    llc = int(p.caches.llc_kib.value * 1024) if p.caches.llc_kib else None
    return Target(p.name, backend, info, bw, compute, p.app_usable_bytes(), p.memory.unified,
                  threads=use, sources=src, llc_bytes=llc)


def measured_stream_gbps(m, threads: int) -> float | None:
    """The best streaming bandwidth a profile measured at ``threads`` or fewer: the largest of the
    read (``sum``), copy and fp32 GEMV rates (a GEMV streams 4 bytes per 2 FLOPs, as decode does).

    Every sample is a lower bound of what the memory system delivers (other processes, page
    faults and a kernel's own limits only slow it down), so the best of them is the estimate; on a
    shared machine a single-thread ``sum`` alone came out anywhere from 13 to 39 GB/s.
    """
    vals = [v for v in (m.best_bandwidth_gbps("read", threads), m.best_bandwidth_gbps("copy", threads)) if v]
    gemv = m.best_compute_gflops("gemv", "fp32", threads)
    if gemv:
        vals.append(gemv * 2.0)
    return max(vals) if vals else None


def resolve_target(profile: DeviceProfile, backend: str, threads: int | None = None) -> Target:
    """The numbers a plan for ``backend`` on ``profile`` uses: bandwidth (measured, else datasheet
    x STREAM fraction), peak compute per dtype, and the memory pool (app-usable RAM for CPU/NPU
    and unified GPUs, the GPU's own memory for discrete GPUs).

    Raises:
        UserError: the device does not list ``backend``, or lacks the numbers it needs.
    """
    info = backend_info(backend)
    if backend not in profile.backends:
        raise UserError(f"device {profile.name} does not support backend {backend!r}",
                        f"it supports {', '.join(profile.backends)}")
    if info.kind == "cpu":
        return _cpu_target(profile, backend, info, threads)
    src: dict[str, str] = {}
    mem = profile.memory
    if info.kind == "gpu":
        g = profile.accelerators.gpus[0]
        m = profile.measured
        measured_bw = m.best_bandwidth_gbps("copy", device="gpu") if m else None
        bw_s = g.bandwidth_gbps or mem.bandwidth_gbps
        if measured_bw:
            bw = measured_bw * 1e9
            src["bandwidth"] = f"measured GPU copy bandwidth ({m.tool}, {m.date})"
        elif bw_s is not None:
            bw = bw_s.value * 1e9 * STREAM_FRACTION["gpu"]
            src["bandwidth"] = f"{STREAM_SOURCE}; peak: {bw_s.source}"
        else:
            raise UserError(f"device {profile.name} has no GPU bandwidth", "add accelerators.gpus[0].bandwidth_gbps")
        compute = {}
        for dtype, s in (("fp32", g.peak_fp32_tflops), ("fp16", g.peak_fp16_tflops), ("int8", g.peak_int8_tops)):
            if s is not None:
                compute[dtype] = s.value * 1e12
                src[f"compute.{dtype}"] = f"datasheet: {s.source}"
        measured_fp16 = m.best_compute_gflops("gemm", "fp16", device="gpu") if m else None
        if measured_fp16:
            compute["fp16"] = measured_fp16 * 1e9
            src["compute.fp16"] = "measured fp16 GEMM on the GPU"
        if not compute:  # pragma: no cover - schema requires numbers for GPU backends in practice
            raise UserError(f"device {profile.name} GPU {g.name} has no peak throughput",
                            "add peak_fp16_tflops to accelerators.gpus[0]")
        compute.setdefault("fp16", compute.get("fp32", 0.0))
        compute.setdefault("fp32", compute["fp16"] / 2)
        compute.setdefault("int8", compute["fp16"])
        if g.memory_gib is not None:  # discrete
            usable = g.usable_memory_gib or g.memory_gib
            pool, unified = int(usable.value * GIB), False
            src["memory"] = f"GPU memory: {usable.source}"
        else:
            pool, unified = profile.app_usable_bytes(), True
            src["memory"] = f"unified memory, app-usable: {mem.app_usable_gib.source}"
        return Target(profile.name, backend, info, bw, compute, pool, unified, sources=src)
    # NPU: streams weights from the shared LPDDR.
    n = profile.accelerators.npus[0]
    if mem.bandwidth_gbps is None:
        raise UserError(f"device {profile.name} has no memory bandwidth for its NPU", "add memory.bandwidth_gbps")
    bw = mem.bandwidth_gbps.value * 1e9 * STREAM_FRACTION["npu"]
    src["bandwidth"] = f"{STREAM_SOURCE}; peak: {mem.bandwidth_gbps.source}"
    if n.peak_int8_tops is None:
        raise UserError(f"device {profile.name} NPU {n.name} has no peak TOPS", "add peak_int8_tops")
    tops = n.peak_int8_tops.value * 1e12
    src["compute.int8"] = f"datasheet: {n.peak_int8_tops.source}"
    compute = {"int8": tops, "fp16": tops / 2, "fp32": tops / 8}
    limit = int(n.session_memory_limit_gib.value * GIB) if n.session_memory_limit_gib else None
    if limit:
        src["session_limit"] = n.session_memory_limit_gib.source
    return Target(profile.name, backend, info, bw, compute, profile.app_usable_bytes(), True,
                  session_limit_bytes=limit, sources=src)


def compute_dtype(fmt: WeightFormat, target: Target) -> str:
    """The dtype matmuls run in: int8 on CPUs/NPUs for integer weights (dynamically quantized
    activations, XNNPACK qd8 / HTP), fp16 on GPUs, fp32 for fp32 weights on CPUs."""
    if target.info.kind == "gpu":
        return "fp16"
    if not fmt.is_float:
        return "int8"
    return "fp16" if fmt.bits == 16 and target.info.kind == "npu" else "fp32"


@dataclass
class StepEstimate:
    """Time of one forward and why."""

    seconds: float
    bytes: float
    flops: float
    t_memory: float
    t_compute: float
    t_overhead: float

    @property
    def bound(self) -> str:
        return "memory" if self.t_memory >= self.t_compute else "compute"

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "bytes": self.bytes, "flops": self.flops,
                "t_memory": self.t_memory, "t_compute": self.t_compute,
                "t_overhead": self.t_overhead, "bound": self.bound}


def blockffn_union_fraction(active_fraction: float, tokens: int) -> float:
    """Expected share of experts active for at least one of ``tokens`` consecutive tokens."""
    if active_fraction >= 1.0:
        return 1.0
    return min(1.0, active_fraction * max(tokens, 1) ** BLOCKFFN_UNION_EXPONENT)


def forward_time(shape: ModelShape, fmt: WeightFormat, target: Target, *, tokens: int, context: int,
                 kv_bytes: float, sparse: bool = True) -> StepEstimate:
    """Roofline time of one forward of ``tokens`` tokens attending ``context`` cached positions.

    Bytes: the weights a decode step reads (BlockFFN: the union of the tokens' active experts
    when ``sparse``), the KV cache read for ``context`` rows and written for ``tokens`` rows, the
    fp32 logits. FLOPs: ``2 * T * params_read`` + attention ``4 * L * q_dim * S * T``. Bytes that
    fit in half the CPU's last-level cache are read at :data:`LLC_FACTOR` x the bandwidth. The
    overhead is the backend's per-layer dispatch plus ``score_s`` per attention score
    (``T * n_heads * S * L``).
    """
    frac = blockffn_union_fraction(shape.active_fraction, tokens) if (sparse and shape.is_blockffn) else 1.0
    w = decode_weight_read_bytes(shape, fmt, frac)
    kv = kv_cache_bytes(shape, context, kv_bytes) + kv_cache_bytes(shape, tokens, kv_bytes)
    if shape.is_encoder_decoder:
        kv += kv_cache_bytes(shape, context, kv_bytes)  # cross-attention K/V of the input
    logits = tokens * shape.vocab_size * 4
    byts = w + kv + logits
    params = _params_read(shape, frac)
    attn_ctx = context + tokens / 2
    flops = 2 * tokens * params + 4 * shape.n_layers * shape.q_dim * attn_ctx * tokens
    if shape.is_encoder_decoder:
        flops += 4 * shape.n_layers * shape.q_dim * context * tokens
    dtype = compute_dtype(fmt, target)
    bw = target.bandwidth * target.info.eff_bw
    if target.llc_bytes and byts <= target.llc_bytes // 2:
        bw *= LLC_FACTOR  # the whole step stays in the last-level cache between steps
    t_mem = byts / bw
    t_cmp = flops / (target.compute[dtype] * target.info.eff_compute)
    scores = tokens * shape.n_heads * attn_ctx * shape.n_layers
    t_ovh = target.info.layer_overhead_s * shape.n_layers + target.info.score_s * scores
    return StepEstimate(max(t_mem, t_cmp) + t_ovh, byts, flops, t_mem, t_cmp, t_ovh)


def _params_read(shape: ModelShape, ffn_fraction: float) -> float:
    """Weights one decoder forward multiplies with (per token): decoder linears, cross-attention
    q/o, the active FFN share, the LM head."""
    att = sum(o * i for o, i in shape.attention_matrices())
    ffn = sum(o * i for o, i in shape.ffn_matrices())
    cross = 2 * shape.dim * shape.q_dim if shape.is_encoder_decoder else 0
    return shape.n_layers * (att + cross + ffn * ffn_fraction) + shape.vocab_size * shape.dim


def prefill_time(shape: ModelShape, fmt: WeightFormat, target: Target, *, prompt: int, chunk: int,
                 kv_bytes: float) -> float:
    """Seconds to prefill ``prompt`` tokens in chunks of ``chunk`` (the TTFT). An
    encoder-decoder encodes the prompt in one bidirectional pass of its encoder."""
    if shape.is_encoder_decoder:
        enc = shape.replace(n_layers=shape.n_encoder_layers, n_encoder_layers=0)
        t = forward_time(enc, fmt, target, tokens=prompt, context=prompt, kv_bytes=kv_bytes).seconds
        return t + forward_time(shape, fmt, target, tokens=1, context=prompt, kv_bytes=kv_bytes).seconds
    total, done = 0.0, 0
    while done < prompt:
        n = min(chunk, prompt - done)
        total += forward_time(shape, fmt, target, tokens=n, context=done, kv_bytes=kv_bytes).seconds
        done += n
    return total


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a speculative step yields: ``(1 - alpha^(k+1)) / (1 - alpha)`` (k+1 when alpha=1)."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"acceptance rate {alpha} is outside [0, 1]", "pass --acceptance between 0 and 1")
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def speculative_speedup(alpha: float, k: int, c: float) -> float:
    """The standard speedup ``E / (k c + 1)`` over plain decoding (verification costs one step)."""
    return expected_tokens(alpha, k) / (k * c + 1.0)


@dataclass
class SpeedEstimate:
    decode_tok_s: float
    ttft_s: float
    step: StepEstimate  # the target's plain one-token step
    verify: StepEstimate | None = None
    draft_step_s: float = 0.0
    alpha: float | None = None
    expected_tokens: float = 1.0
    draft_cost: float = 0.0  # c: draft step / target step
    speedup: float = 1.0  # roofline-based, over plain decoding
    speedup_standard: float = 1.0  # E / (k c + 1)

    def to_dict(self) -> dict:
        d = {"decode_tok_s": self.decode_tok_s, "ttft_s": self.ttft_s, "step": self.step.to_dict(),
             "speedup": self.speedup}
        if self.verify is not None:
            d.update(verify=self.verify.to_dict(), draft_step_s=self.draft_step_s, alpha=self.alpha,
                     expected_tokens=self.expected_tokens, draft_cost=self.draft_cost,
                     speedup_standard=self.speedup_standard)
        return d


def decode_speed(shape: ModelShape, fmt: WeightFormat, target: Target, *, context: int, prompt: int,
                 kv_bytes: float, prefill_chunk: int, draft_kind: str = "none", k: int = 0,
                 alpha: float | None = None, draft_step_s: float | None = None,
                 verify_tokens: int | None = None, draft_calls: int | None = None,
                 sparse: bool = True, static_cache: bool = False) -> SpeedEstimate:
    """Decode tokens/s and TTFT. Decode is timed at the middle of the generation window
    (KV length halfway between ``prompt`` and ``context``), never from an empty cache.

    ``static_cache``: the program attends every one of the ``context`` allocated KV rows at each
    step, filled or not (edgekit's float ExecuTorch programs: a fixed ``(B, n_kv, S, hd)`` cache
    and a ``(T, S)`` additive mask), so a step reads the whole cache instead of the filled part.
    Quantized programs carry ``edgekit::sdpa_cache``, which reads only the filled part.

    With a draft (``draft_kind != "none"``) a step costs ``draft_calls`` (default ``k``; Medusa
    heads draft all k in one call) draft forwards of ``draft_step_s`` seconds plus one
    verification forward of ``verify_tokens`` (default ``k+1``) and yields
    ``expected_tokens(alpha, k)``.
    """
    s_mid = context if static_cache else (min(prompt, context) + context) // 2
    step = forward_time(shape, fmt, target, tokens=1, context=s_mid, kv_bytes=kv_bytes, sparse=sparse)
    ttft = prefill_time(shape, fmt, target, prompt=min(prompt, context), chunk=prefill_chunk, kv_bytes=kv_bytes)
    if draft_kind == "none":
        return SpeedEstimate(1.0 / step.seconds, ttft, step)
    assert alpha is not None and draft_step_s is not None and k >= 1
    T = verify_tokens or k + 1
    verify = forward_time(shape, fmt, target, tokens=T, context=s_mid, kv_bytes=kv_bytes, sparse=sparse)
    e = expected_tokens(alpha, k)
    calls = k if draft_calls is None else draft_calls
    t_step = calls * draft_step_s + verify.seconds
    c = calls * draft_step_s / (k * step.seconds)
    tok_s = e / t_step
    return SpeedEstimate(tok_s, ttft, step, verify, draft_step_s, alpha, e, c,
                         tok_s * step.seconds, speculative_speedup(alpha, k, c))
