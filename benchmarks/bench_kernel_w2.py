"""Micro-benchmark of the packed-weight GEMV kernel (edgekit/kernels/cpu) on SmolLM2-135M shapes.

For each linear shape (N out x K in) of a SmolLM2-135M layer and each implementation -- the
native kernel (SIMD, as ``auto`` picks it), its scalar reference, and fp32 ``torch.nn.functional
.linear`` -- it times single-token GEMV (M=1), the int8-activation kernel in the row-major and in the row-interleaved
(r16) weight order too: one warm-up, then ``--reps`` repetitions of
``--iters`` back-to-back calls, reporting the median and min/max seconds per call, GB/s of weight
bytes read (packed codes + fp16 scale/zero for the kernel, fp32 for torch) and a decode tok/s
equivalent of the linear layers alone (30 layers x (q, k, v, o, w1, w3, w2); attention, norms,
embedding and lm_head excluded). Native times are taken inside C (no Python overhead); torch
times include its ~µs dispatch overhead per call. Random codes cost the same as trained ones.

The per-shape numbers re-run one matrix that stays in cache; the whole-model sweep then runs the
210 GEMVs of one decode token over distinct weights (33 MB packed at 2-bit g64 vs 425 MB fp32),
which is the memory-streaming regime of real decoding.

    python benchmarks/bench_kernel_w2.py                       # 2-bit g64, 1 and 2 threads
    python benchmarks/bench_kernel_w2.py --bits 4 --group 32 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
# SmolLM2-135M: dim 576, 9 heads x 64, 3 KV heads (kv dim 192), hidden 1536, 30 layers.
LAYER = {"q": (576, 576), "k": (192, 576), "v": (192, 576), "o": (576, 576),
         "w1": (1536, 576), "w3": (1536, 576), "w2": (576, 1536)}
SHAPES = [(576, 576), (1536, 576), (576, 1536), (192, 576)]
N_LAYERS = 30


def _case(N: int, K: int, bits: int, group: int, seed: int = 0):
    from edgekit.quant.layout import Layout, pack_torch

    g = torch.Generator().manual_seed(seed)
    lay = Layout(bits, group)
    codes = torch.randint(0, 2 ** bits, (N, K), generator=g)
    q = pack_torch(codes, lay).numpy()
    G = lay.n_groups(K)
    scale = (torch.rand(N, G, generator=g) * 0.05 + 0.01).half().numpy()
    zero = (torch.rand(N, G, generator=g) * 0.2 - 0.1).half().numpy()
    return q, scale, zero, lay.bytes_for(N, K)


def _stats(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def bench_shape(N: int, K: int, bits: int, group: int, threads: int, reps: int, iters: int) -> dict:
    from edgekit.kernels.cpu import bench_linear_wq, picked_impl, set_num_threads
    from edgekit.quant.layout import Layout, r16_applies

    set_num_threads(threads)
    torch.set_num_threads(threads)
    q, scale, zero, packed_bytes = _case(N, K, bits, group)
    x = np.random.default_rng(1).standard_normal((1, K)).astype(np.float32)
    out: dict = {"N": N, "K": K, "packed_bytes": packed_bytes, "fp32_bytes": N * K * 4}
    for name, which, n_iter, act, r16 in (("native", "auto", iters, None, False),
                                          ("scalar", "scalar", max(1, iters // 10), None, False),
                                          ("native_a8", "auto", iters, 8, False), ("native_a8_r16", "auto", iters, 8, True)):
        if r16 and not r16_applies(Layout(bits, group), K):
            continue
        kw = {"act_bits": act, "r16": r16}
        bench_linear_wq(x, q, scale, zero, bits, group, which, iters=max(1, n_iter // 10), **kw)  # warm-up
        t = [bench_linear_wq(x, q, scale, zero, bits, group, which, iters=n_iter, **kw) for _ in range(reps)]
        s = _stats(t)
        out[name] = {"impl": picked_impl(K, bits, group, act) if which == "auto" else "scalar", "s_per_call": s,
                     "gb_s": packed_bytes / s["median"] / 1e9}
    w = torch.randn(N, K)
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        for _ in range(iters // 10 + 1):
            torch.nn.functional.linear(xt, w)
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.nn.functional.linear(xt, w)
            t.append((time.perf_counter() - t0) / iters)
    s = _stats(t)
    out["torch_fp32"] = {"s_per_call": s, "gb_s": N * K * 4 / s["median"] / 1e9}
    out["speedup_vs_scalar"] = out["scalar"]["s_per_call"]["median"] / out["native"]["s_per_call"]["median"]
    out["speedup_vs_fp32"] = out["torch_fp32"]["s_per_call"]["median"] / out["native"]["s_per_call"]["median"]
    return out


def model_sweep(bits: int, group: int, threads: int, reps: int) -> dict:
    """Time one decode token's worth of linears of the whole model (30 layers x 7 GEMVs), each
    with its own weights, so the weights stream from memory as in real decoding instead of
    staying in cache. Random bytes are valid packed codes for 2- and 4-bit."""
    import ctypes

    from edgekit.kernels.cpu import lib, set_num_threads
    from edgekit.quant.layout import Layout

    set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    lay = Layout(bits, group)
    L = lib()
    P = ctypes.POINTER
    from edgekit.kernels.cpu import interleave_r16_native
    from edgekit.quant.layout import r16_applies

    calls, calls_r16, packed_total, fp32_total, fp32_w = [], [], 0, 0, []
    r16_ok = all(r16_applies(Layout(bits, group), K) for K in (576, 1536))
    ys = {}
    x = {K: rng.standard_normal((1, K)).astype(np.float32) for K in (576, 1536)}
    for _ in range(N_LAYERS):
        for N, K in LAYER.values():
            q = rng.integers(0, 256, size=(N, lay.row_bytes(K)), dtype=np.uint8)
            G = lay.n_groups(K)
            sc = (rng.uniform(0.01, 0.05, (N, G))).astype(np.float16).view(np.uint16)
            zr = (rng.uniform(-0.1, 0.1, (N, G))).astype(np.float16).view(np.uint16)
            y = ys.setdefault(N, np.empty((1, N), np.float32))
            calls.append((x[K].ctypes.data_as(P(ctypes.c_float)), K, q.ctypes.data_as(P(ctypes.c_uint8)),
                          sc.ctypes.data_as(P(ctypes.c_uint16)), zr.ctypes.data_as(P(ctypes.c_uint16)), N,
                          y.ctypes.data_as(P(ctypes.c_float)), (q, sc, zr)))
            if r16_ok:  # the same weights in the row-interleaved order ExecuTorch programs store
                qi, si, zi = interleave_r16_native(q, sc, zr, bits, group, K)
                calls_r16.append((x[K].ctypes.data_as(P(ctypes.c_float)), K, qi.ctypes.data_as(P(ctypes.c_uint8)),
                                  si.ctypes.data_as(P(ctypes.c_uint16)), zi.ctypes.data_as(P(ctypes.c_uint16)), N,
                                  y.ctypes.data_as(P(ctypes.c_float)), (qi, si, zi)))
            packed_total += lay.bytes_for(N, K)
            fp32_total += N * K * 4
            fp32_w.append((torch.from_numpy(x[K]), torch.randn(N, K)))

    def native_token() -> None:
        for xp, K, qp, sp, zp, N, yp, _ in calls:
            L.ek_linear_wq(xp, 1, K, qp, sp, zp, N, bits, group, yp, None, 0, 0)

    def native_a8_token() -> None:
        for xp, K, qp, sp, zp, N, yp, _ in calls:
            L.ek_linear_wq_a8(xp, 1, K, qp, sp, zp, N, bits, group, yp, 0)

    def native_a8_r16_token() -> None:
        for xp, K, qp, sp, zp, N, yp, _ in calls_r16:
            L.ek_linear_wq_a8_r16(xp, 1, K, qp, sp, zp, N, bits, group, yp, 0)

    def torch_token() -> None:
        for xt, w in fp32_w:
            torch.nn.functional.linear(xt, w)

    out = {"threads": threads, "packed_bytes": packed_total, "fp32_bytes": fp32_total}
    with torch.inference_mode():
        rows = [("native", native_token, packed_total), ("native_a8", native_a8_token, packed_total),
                ("native_a8_r16", native_a8_r16_token, packed_total), ("torch_fp32", torch_token, fp32_total)]
        for name, fn, nbytes in [r for r in rows if r16_ok or r[0] != "native_a8_r16"]:
            fn()  # warm-up
            t = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
            st = _stats(t)
            out[name] = {"s_per_token": st, "tok_s": 1.0 / st["median"], "gb_s": nbytes / st["median"] / 1e9}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=2, choices=[2, 4, 8])
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None, help="write results here (default: benchmarks/results/"
                    "kernel_w{bits}g{group}.json)")
    a = ap.parse_args(argv)
    from edgekit.runtime.native import build_runner_info

    build_runner_info()
    results = {"bits": a.bits, "group": a.group, "machine": platform.processor() or platform.machine(),
               "load_avg_before": __import__("os").getloadavg(),  # others' work makes timings noisy
               "protocol": f"M=1 GEMV, 1 warm-up, {a.reps} reps x {a.iters} calls, median/min/max", "runs": []}
    for th in a.threads:
        per = {}
        for N, K in SHAPES:
            r = bench_shape(N, K, a.bits, a.group, th, a.reps, a.iters)
            per[(N, K)] = r
            results["runs"].append({"threads": th, **r})
            print(f"[{th} thr] {N:5d}x{K:<5d} native {r['native']['impl']:6s} "
                  f"{r['native']['s_per_call']['median'] * 1e6:8.1f} us {r['native']['gb_s']:6.2f} GB/s | "
                  f"a8 {r['native_a8']['s_per_call']['median'] * 1e6:8.1f} us | "
                  + (f"a8 r16 {r['native_a8_r16']['s_per_call']['median'] * 1e6:8.1f} us | " if "native_a8_r16" in r else "")
                  + f"scalar {r['scalar']['s_per_call']['median'] * 1e6:8.1f} us | "
                  f"fp32 torch {r['torch_fp32']['s_per_call']['median'] * 1e6:8.1f} us "
                  f"{r['torch_fp32']['gb_s']:6.2f} GB/s | x{r['speedup_vs_scalar']:.1f} vs scalar, "
                  f"x{r['speedup_vs_fp32']:.2f} vs fp32", file=sys.stderr)
        for impl in [i for i in ("native", "native_a8", "native_a8_r16", "scalar", "torch_fp32") if i in r]:
            layer_s = sum(per[shape][impl]["s_per_call"]["median"] for shape in LAYER.values())
            results.setdefault("linear_only_tok_s", {}).setdefault(str(th), {})[impl] = 1.0 / (N_LAYERS * layer_s)
        print(f"[{th} thr] linear-only decode tok/s equivalent (30 layers): " + ", ".join(
            f"{k} {v:.0f}" for k, v in results["linear_only_tok_s"][str(th)].items()), file=sys.stderr)
        sw = model_sweep(a.bits, a.group, th, a.reps)
        results.setdefault("model_sweep", []).append(sw)
        print(f"[{th} thr] whole-model linear sweep (weights streamed, {sw['packed_bytes'] / 1e6:.0f} MB packed vs "
              f"{sw['fp32_bytes'] / 1e6:.0f} MB fp32): native {sw['native']['tok_s']:.1f} tok/s "
              f"({sw['native']['gb_s']:.2f} GB/s), int8-activation {sw['native_a8']['tok_s']:.1f} tok/s "
              f"({sw['native_a8']['gb_s']:.2f} GB/s), "
              + (f"int8-activation r16 {sw['native_a8_r16']['tok_s']:.1f} tok/s ({sw['native_a8_r16']['gb_s']:.2f} GB/s), "
                 if "native_a8_r16" in sw else "")
              + f"torch fp32 {sw['torch_fp32']['tok_s']:.1f} tok/s "
              f"({sw['torch_fp32']['gb_s']:.2f} GB/s)", file=sys.stderr)
    path = a.json or RESULTS / f"kernel_w{a.bits}g{a.group}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"linear_only_tok_s": results["linear_only_tok_s"],
                      "model_sweep": results["model_sweep"]}, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    main()
