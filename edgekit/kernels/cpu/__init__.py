"""ctypes bindings of the CPU group-quantized linear kernel (wq_linear.h).

The shared library is built together with the native runner (edgekit.runtime.native) and
cached; the first call builds it. ``impl`` selects an implementation: ``"auto"``, ``"scalar"``
(the reference), ``"avx2"``, ``"neon"``, ``"avxvnni"``, ``"avx512vnni"`` and ``"neondot"`` (the
last three: int8 activations only); see :func:`available_impls`.

Example::

    from edgekit.kernels.cpu import linear_wq
    y = linear_wq(x, qweight, scale, zero, bits=2, group_size=64)   # numpy or torch inputs
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from edgekit.errors import InternalError, UserError

# avxvnni, avx512vnni, neondot (NEON + SDOT): int8-activation path only
IMPLS = {"auto": 0, "scalar": 1, "avx2": 2, "neon": 3, "avxvnni": 4, "neondot": 5, "avx512vnni": 6}
_NAMES = {v: k for k, v in IMPLS.items()}

_lib: ctypes.CDLL | None = None
_lock = threading.Lock()


def lib() -> ctypes.CDLL:
    """The loaded kernel library (built on first use)."""
    global _lib
    with _lock:
        if _lib is None:
            from edgekit.runtime.native import kernels_lib_path

            L = ctypes.CDLL(str(kernels_lib_path()))
            i64, f32p, u8p, u16p = ctypes.c_int64, ctypes.POINTER(ctypes.c_float), \
                ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_uint16)
            L.ek_linear_wq.argtypes = [f32p, i64, i64, u8p, u16p, u16p, i64, ctypes.c_int, i64, f32p,
                                       f32p, ctypes.c_size_t, ctypes.c_int]
            L.ek_linear_wq.restype = ctypes.c_int
            L.ek_row_bytes.argtypes = [i64, ctypes.c_int, i64]
            L.ek_row_bytes.restype = i64
            L.ek_linear_wq_pick.argtypes = [i64, ctypes.c_int, i64]
            L.ek_linear_wq_pick.restype = ctypes.c_int
            L.ek_impl_available.argtypes = [ctypes.c_int]
            L.ek_set_num_threads.argtypes = [ctypes.c_int]
            L.ek_status_str.restype = ctypes.c_char_p
            L.ek_bench_linear_wq.argtypes = [f32p, i64, i64, u8p, u16p, u16p, i64, ctypes.c_int, i64, f32p,
                                             ctypes.c_int, ctypes.c_int]
            L.ek_bench_linear_wq.restype = ctypes.c_double
            L.ek_linear_wq_a8.argtypes = [f32p, i64, i64, u8p, u16p, u16p, i64, ctypes.c_int, i64, f32p,
                                          ctypes.c_int]
            L.ek_linear_wq_a8.restype = ctypes.c_int
            L.ek_linear_wq_a8_pick.argtypes = [i64, ctypes.c_int, i64]
            L.ek_linear_wq_a8_pick.restype = ctypes.c_int
            L.ek_bench_linear_wq_a8.argtypes = L.ek_bench_linear_wq.argtypes
            L.ek_bench_linear_wq_a8.restype = ctypes.c_double
            L.ek_linear_wq_a8_r16.argtypes = L.ek_linear_wq_a8.argtypes
            L.ek_linear_wq_a8_r16.restype = ctypes.c_int
            L.ek_linear_wq_a8_r16_pick.argtypes = [i64, ctypes.c_int, i64]
            L.ek_linear_wq_a8_r16_pick.restype = ctypes.c_int
            L.ek_bench_linear_wq_a8_r16.argtypes = L.ek_bench_linear_wq.argtypes
            L.ek_bench_linear_wq_a8_r16.restype = ctypes.c_double
            L.ek_r16_bytes.argtypes = [i64, i64, ctypes.c_int, i64]
            L.ek_r16_bytes.restype = i64
            L.ek_interleave_r16.argtypes = [u8p, u16p, u16p, i64, i64, ctypes.c_int, i64, u8p, u16p, u16p]
            L.ek_interleave_r16.restype = ctypes.c_int
            f, c_int = ctypes.c_float, ctypes.c_int
            L.ek_sdpa_cache_impl.argtypes = [f32p, i64, i64, i64, f32p, f32p, i64, i64, f32p, f, f32p, c_int]
            L.ek_rms_norm.argtypes = [f32p, f32p, i64, i64, f, f32p]
            L.ek_rope_half.argtypes = [f32p, f32p, f32p, i64, i64, i64, i64, f32p]
            L.ek_swiglu.argtypes = [f32p, f32p, i64, f32p]
            for fn in (L.ek_sdpa_cache_impl, L.ek_rms_norm, L.ek_rope_half, L.ek_swiglu):
                fn.restype = c_int
            L.ek_core_roundtrip_ns.argtypes = [i64]
            L.ek_core_roundtrip_ns.restype = ctypes.c_double
            L.ek_pool_balance_probe.argtypes = [ctypes.c_int, ctypes.c_int, i64, i64, i64, ctypes.c_uint64,
                                                ctypes.c_int, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(i64)]
            L.ek_pool_balance_probe.restype = ctypes.c_int
            _lib = L
        return _lib


def available_impls() -> list[str]:
    """Implementations this CPU can run (``scalar`` always)."""
    L = lib()
    return [n for n, v in IMPLS.items() if v and L.ek_impl_available(v)]


def picked_impl(K: int, bits: int, group_size: int | None, act_bits: int | None = None) -> str:
    """The implementation ``auto`` uses for this shape (``act_bits=8``: the int8-activation path)."""
    L = lib()
    pick = L.ek_linear_wq_a8_pick if act_bits == 8 else L.ek_linear_wq_pick
    return _NAMES[pick(K, bits, group_size or 0)]


def set_num_threads(n: int) -> None:
    """Resize the shared ExecuTorch threadpool used by the kernels (and XNNPACK in-process)."""
    if lib().ek_set_num_threads(int(n)) != 0:
        raise UserError(f"cannot use {n} threads", "pass a positive thread count")


def get_num_threads() -> int:
    return int(lib().ek_get_num_threads())


def core_roundtrip_ns(iters: int = 100_000) -> float:
    """Mean round trip of one cache line between two threads, in ns (``probe.h``): how far apart
    two cores' caches are, i.e. what each fork-join region of the kernels pays to start and end.

    Raises:
        UserError: ``iters`` < 1. InternalError: the second thread could not start.
    """
    if iters < 1:
        raise UserError(f"iters {iters} < 1", "pass a positive round-trip count")
    ns = float(lib().ek_core_roundtrip_ns(int(iters)))
    if ns <= 0:
        raise InternalError("core_roundtrip_ns: the probe thread did not start")
    return ns


def pool_balance_probe(threads: int, calls: int, n: int, fast_ns: int, slow_ns: int,
                       kind: int = 0, hold: bool = False) -> tuple[float, int]:
    """Run ``calls`` pool regions of ``n`` rows where rows cost ``fast_ns`` on the calling thread
    and ``slow_ns`` on the workers (``probe.h``; ``kind``: the work hint per row, and
    ``n * kind >= 2**22`` makes the threads steal; ``hold``: a worker's first rows wait, up to
    2 s, until the caller has run all the others). Returns the caller's share of the rows in the
    last region and the count of (region, row) pairs not run exactly once.

    Raises:
        UserError: an argument out of range.
    """
    share, bad = ctypes.c_double(), ctypes.c_int64()
    if lib().ek_pool_balance_probe(int(threads), int(calls), int(n), int(fast_ns), int(slow_ns), int(kind),
                                   int(bool(hold)), ctypes.byref(share), ctypes.byref(bad)) != 0:
        raise UserError("pool_balance_probe: argument out of range",
                        "threads, calls, n >= 1 (n <= 2^24), times >= 0")
    return float(share.value), int(bad.value)


def _arr(a, dtype) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(a, dtype=dtype)


def _half_bits(a) -> np.ndarray:
    """fp16 values (torch/numpy float16, or already their uint16 bit patterns) -> uint16."""
    if hasattr(a, "detach"):
        import torch

        a = a.detach().cpu().contiguous().to(torch.float16).view(torch.int16).numpy()
        return np.ascontiguousarray(a).view(np.uint16)
    a = np.asarray(a)
    if a.dtype == np.uint16:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a.astype(np.float16)).view(np.uint16)


def _check_act(act_bits: int | None) -> None:
    if act_bits not in (None, 8):
        raise UserError(f"act_bits={act_bits} is not supported", "use None (float activations) or 8")


def linear_wq(x, qweight, scale, zero, bits: int, group_size: int | None, impl: str = "auto",
              in_features: int | None = None, act_bits: int | None = None) -> np.ndarray:
    """``y = x @ W_hat^T`` with the native kernel.

    Args:
        x: float32 (..., K). qweight: uint8 (N, row_bytes). scale, zero: float16 (N, G).
        bits: 2, 3, 4 or 8 (SIMD paths: 2 and 4; with int8 activations 2, 4 and 8).
        group_size: None/0 = per output row.
        impl: "auto" | "scalar" | "avx2" | "neon" | "avxvnni" | "avx512vnni" | "neondot" (the
            last three with int8 activations only).
        in_features: K (default x.shape[-1]).
        act_bits: None = float activations; 8 = x quantized to int8 per group (wq_linear.h).
    Returns:
        float32 numpy array (..., N).
    Raises:
        UserError on shape mismatch or an implementation that cannot run this shape/CPU.
    """
    xa = _arr(x, np.float32)
    K = int(in_features or xa.shape[-1])
    if xa.shape[-1] != K:
        raise UserError(f"x last dim {xa.shape[-1]} != in_features {K}", "pass matching shapes")
    q = _arr(qweight, np.uint8)
    s, z = _half_bits(scale), _half_bits(zero)
    L = lib()
    gs = int(group_size or 0)
    N = q.shape[0]
    rb = L.ek_row_bytes(K, bits, gs)
    g = gs if gs > 0 else K
    G = -(-K // g)
    if q.ndim != 2 or q.shape[1] != rb or s.shape != (N, G) or z.shape != (N, G):
        raise UserError(f"packed shapes {q.shape}, {s.shape}, {z.shape} do not match K={K}, bits={bits}, "
                        f"group_size={gs} (want ({N}, {rb}) and ({N}, {G}))", "pack with edgekit.quant.layout")
    M = int(np.prod(xa.shape[:-1], dtype=np.int64))
    y = np.empty((*xa.shape[:-1], N), dtype=np.float32)
    P = ctypes.POINTER
    _check_act(act_bits)
    args = (xa.ctypes.data_as(P(ctypes.c_float)), M, K, q.ctypes.data_as(P(ctypes.c_uint8)),
            s.ctypes.data_as(P(ctypes.c_uint16)), z.ctypes.data_as(P(ctypes.c_uint16)), N, bits, gs,
            y.ctypes.data_as(P(ctypes.c_float)))
    if act_bits == 8:
        st = L.ek_linear_wq_a8(*args, IMPLS[impl])
    else:
        st = L.ek_linear_wq(*args, None, 0, IMPLS[impl])
    if st != 0:
        raise UserError(f"kernel {impl} failed: {L.ek_status_str(st).decode()}",
                        f"available here: {', '.join(available_impls())}")
    return y


def interleave_r16_native(qweight, scale, zero, bits: int, group_size: int | None, K: int):
    """The C library's canonical -> r16 reordering (wq_linear.h ``ek_interleave_r16``): numpy
    (qweight uint8 [NB, 16 row_bytes], scale, zero as uint16 bit patterns [NB, 16 G]). The
    definition is edgekit.quant.layout.interleave_r16; the tests hold the two to the same bytes."""
    q = _arr(qweight, np.uint8)
    s, z = _half_bits(scale), _half_bits(zero)
    N, gs, L, P = q.shape[0], int(group_size or 0), lib(), ctypes.POINTER
    nbytes = L.ek_r16_bytes(N, K, bits, gs)
    if nbytes < 0:
        raise UserError(f"no r16 order for bits={bits}, group_size={gs}, K={K}",
                        "r16 needs group_size * bits a multiple of 128 (w2 g64, w4 g32, w8 g16)")
    NB, G = -(-N // 16), s.shape[1]
    qi = np.empty((NB, nbytes // NB), np.uint8)
    si, zi = np.empty((NB, 16 * G), np.uint16), np.empty((NB, 16 * G), np.uint16)
    u8, u16 = P(ctypes.c_uint8), P(ctypes.c_uint16)
    st = L.ek_interleave_r16(q.ctypes.data_as(u8), s.ctypes.data_as(u16), z.ctypes.data_as(u16), N, K, bits, gs,
                             qi.ctypes.data_as(u8), si.ctypes.data_as(u16), zi.ctypes.data_as(u16))
    if st != 0:
        raise UserError(f"interleave failed: {L.ek_status_str(st).decode()}", "check the packed shapes")
    return qi, si, zi


def linear_wq_r16(x, qweight_r16, scale_r16, zero_r16, bits: int, group_size: int | None, out_features: int,
                  impl: str = "auto") -> np.ndarray:
    """``y = x @ W_hat^T`` with int8 activations on weights in the r16 order
    (edgekit.quant.layout.interleave_r16): float32 numpy (..., out_features)."""
    xa = _arr(x, np.float32)
    K, N, gs, L = xa.shape[-1], int(out_features), int(group_size or 0), lib()
    q = _arr(qweight_r16, np.uint8)
    s, z = _half_bits(scale_r16), _half_bits(zero_r16)
    nbytes = L.ek_r16_bytes(N, K, bits, gs)
    G = -(-K // (gs if gs > 0 else K))
    NB = -(-N // 16)
    if nbytes < 0 or q.size != nbytes or s.size != NB * 16 * G or z.size != NB * 16 * G:
        raise UserError(f"r16 shapes {q.shape}, {s.shape}, {z.shape} do not match N={N}, K={K}, bits={bits}, "
                        f"group_size={gs}", "reorder with edgekit.quant.layout.interleave_r16")
    M = int(np.prod(xa.shape[:-1], dtype=np.int64))
    y = np.empty((*xa.shape[:-1], N), dtype=np.float32)
    P = ctypes.POINTER
    st = L.ek_linear_wq_a8_r16(xa.ctypes.data_as(P(ctypes.c_float)), M, K, q.ctypes.data_as(P(ctypes.c_uint8)),
                               s.ctypes.data_as(P(ctypes.c_uint16)), z.ctypes.data_as(P(ctypes.c_uint16)), N, bits,
                               gs, y.ctypes.data_as(P(ctypes.c_float)), IMPLS[impl])
    if st != 0:
        raise UserError(f"kernel {impl} failed: {L.ek_status_str(st).decode()}",
                        f"available here: {', '.join(available_impls())}")
    return y


def bench_linear_wq(x, qweight, scale, zero, bits: int, group_size: int | None, impl: str = "auto",
                    iters: int = 100, act_bits: int | None = None, r16: bool = False) -> float:
    """Mean seconds per kernel call over ``iters`` back-to-back calls timed inside C (one
    untimed call first), so Python and ctypes overhead are not counted. ``r16``: the canonical
    weights are reordered first and the r16 kernel is timed (int8 activations)."""
    xa, q = _arr(x, np.float32), _arr(qweight, np.uint8)
    s, z = _half_bits(scale), _half_bits(zero)
    K = xa.shape[-1]
    M = int(np.prod(xa.shape[:-1], dtype=np.int64))
    N = q.shape[0]
    y = np.empty((M, N), dtype=np.float32)
    P = ctypes.POINTER
    _check_act(act_bits)
    fn = lib().ek_bench_linear_wq_a8 if act_bits == 8 else lib().ek_bench_linear_wq
    if r16:
        _check_act(8 if act_bits is None else act_bits)
        q, s, z = interleave_r16_native(q, s, z, bits, group_size, K)
        fn = lib().ek_bench_linear_wq_a8_r16
    t = fn(xa.ctypes.data_as(P(ctypes.c_float)), M, K, q.ctypes.data_as(P(ctypes.c_uint8)),
           s.ctypes.data_as(P(ctypes.c_uint16)), z.ctypes.data_as(P(ctypes.c_uint16)), N, bits,
           int(group_size or 0), y.ctypes.data_as(P(ctypes.c_float)), IMPLS[impl], int(iters))
    if t < 0:
        raise UserError(f"kernel {impl} failed: {lib().ek_status_str(int(-t)).decode()}",
                        f"available here: {', '.join(available_impls())}")
    return float(t)


def sdpa_cache(q, k_cache, v_cache, mask, impl: str = "auto") -> np.ndarray:
    """Attention over a KV cache with the native kernel (attn.h): q float32 (1, H, T, hd),
    k_cache/v_cache (1, KV, S, hd), mask (T, S) additive (0 visible, -inf hidden). Returns
    (1, T, H * hd). Only each row's visible slots are read; a row that sees nothing gives zeros.
    ``impl``: "auto", "scalar" (the portable rows) or "avx2"."""
    qa, ka, va, ma = (_arr(a, np.float32) for a in (q, k_cache, v_cache, mask))
    _, H, T, hd = qa.shape
    _, KV, S, _ = ka.shape
    if ka.shape != va.shape or ka.shape[3] != hd or ma.shape != (T, S):
        raise UserError(f"sdpa shapes q {qa.shape}, k {ka.shape}, v {va.shape}, mask {ma.shape} disagree",
                        "pass q (1,H,T,hd), k/v (1,KV,S,hd), mask (T,S)")
    out = np.empty((1, T, H * hd), dtype=np.float32)
    P = ctypes.POINTER(ctypes.c_float)
    L = lib()
    st = L.ek_sdpa_cache_impl(qa.ctypes.data_as(P), H, T, hd, ka.ctypes.data_as(P), va.ctypes.data_as(P), KV, S,
                              ma.ctypes.data_as(P), ctypes.c_float(float(np.float32(1.0 / np.sqrt(hd)))),
                              out.ctypes.data_as(P), IMPLS[impl])
    if st != 0:
        raise UserError(f"sdpa kernel failed: {L.ek_status_str(st).decode()}", "check the shapes (H % KV == 0)")
    return out


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(_arr(a, np.float32))


def _fp(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def _ew_call(name: str, *args) -> None:
    st = getattr(lib(), name)(*args)
    if st != 0:
        raise UserError(f"kernel {name} failed: {lib().ek_status_str(st).decode()}", "check the shapes")


def rms_norm(x, weight, eps: float) -> np.ndarray:
    """edgekit::rms_norm's kernel (ew.h): x (..., D) float32, weight (D,)."""
    xa, w = _f32(x), _f32(weight)
    out = np.empty_like(xa)
    _ew_call("ek_rms_norm", _fp(xa), _fp(w), xa.size // w.size, w.size, eps, _fp(out))
    return out


def rope(x, cos, sin) -> np.ndarray:
    """edgekit::rope's kernel (ew.h): x (B, T, H, hd) -> (B, H, T, hd); cos/sin (T, hd)."""
    xa, c, s = _f32(x), _f32(cos), _f32(sin)
    B, T, H, hd = xa.shape
    out = np.empty((B, H, T, hd), dtype=np.float32)
    _ew_call("ek_rope_half", _fp(xa), _fp(c), _fp(s), B, T, H, hd, _fp(out))
    return out


def swiglu(gate, up) -> np.ndarray:
    """edgekit::swiglu's kernel (ew.h): silu(gate) * up."""
    g, u = _f32(gate), _f32(up)
    out = np.empty_like(g)
    _ew_call("ek_swiglu", _fp(g), _fp(u), g.size, _fp(out))
    return out
