"""Decode speed of a SmolLM2-135M-shaped model (random fp32 weights) across runtimes.

Exports ``SHAPES["smollm2-135m"]`` with max_seq_len 512 to an ExecuTorch + ONNX package, then runs
edgekit's bench protocol (warm-up not counted, median and min/max over reps, decode measured
after the prompt) for eager torch, ExecuTorch in Python, the native runner (when
``edgekit.runtime.native`` is available) and onnxruntime, and puts the achieved GB/s (weight
bytes x decode tok/s) next to the machine's measured memory read bandwidth.

Writes ``benchmarks/results/export_smollm2.json`` and ``export_smollm2.md``.

    python benchmarks/bench_export_smollm2.py --threads 2 --reps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.models.config import SHAPES  # noqa: E402
from edgekit.models.llama import Transformer  # noqa: E402
from edgekit.models.load import LoadedModel, Source  # noqa: E402
from edgekit.models.tokenizer import Llama2cTokenizer  # noqa: E402


def stand_in_tokenizer(vocab: int) -> Llama2cTokenizer:
    """A llama2.c-format tokenizer of the right size: specials, 256 byte tokens, ASCII, fillers."""
    pieces = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    pieces += [bytes([c]) for c in range(32, 127)]
    pieces += [f"t{i}".encode() for i in range(vocab - len(pieces))]
    return Llama2cTokenizer(pieces, [0.0] * vocab)


def random_model(seq: int, seed: int = 0, n_layers: int | None = None, shape: str = "smollm2-135m",
                 **overrides) -> LoadedModel:
    """A random-weight model of a real shape (HF init std 0.02), with a stand-in tokenizer."""
    args = dataclasses.replace(SHAPES[shape], max_seq_len=seq, **overrides)
    if n_layers:  # smoke runs only; the report says so
        args = dataclasses.replace(args, n_layers=n_layers)
    torch.manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    return LoadedModel(model.eval(), stand_in_tokenizer(args.vocab_size), args,
                       Source(f"random:{shape}(seed={seed})", "random", []))


def memory_bandwidth_gbs(threads: int) -> dict:
    """Read bandwidth: edgekit.profile's measurement when present, else a numpy streaming sum."""
    try:
        from edgekit.profile.host import measure_bandwidth

        s = [x for x in measure_bandwidth([threads], 512, 3) if x.kind == "read"][0]
        return {"read_gb_s": s.gbps, "method": f"edgekit.profile.host.measure_bandwidth (torch sum, "
                                                 f"{threads} threads, 512 MiB)"}
    except ImportError:
        import numpy as np

        a = np.ones(128 << 20, dtype=np.float32)
        best = min((lambda t0: (a.sum(), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(3))
        return {"read_gb_s": round(a.nbytes / best / 1e9, 2), "method": "numpy sum, 1 thread, 512 MiB"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--layers", type=int, help="override n_layers (smoke test; results not comparable)")
    ap.add_argument("--keep", help="keep the exported package in this directory")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: bench the package already there (same seed = same weights)")
    ap.add_argument("--export-only", action="store_true", help="export (to --keep) and stop")
    a = ap.parse_args()

    from edgekit.export.builder import export_package
    from edgekit.runtime.bench import bench_backend, bench_native_pte
    from edgekit.runtime.engine import EagerBackend
    from edgekit.runtime.package import load_package

    torch.set_num_threads(a.threads)
    lm = random_model(a.max_seq_len, n_layers=a.layers)
    work = Path(tempfile.mkdtemp(prefix="edgekit-smollm2-"))
    pkg_dir = Path(a.keep) if a.keep else work / "pkg"
    t0 = time.perf_counter()
    if a.reuse and (pkg_dir / "manifest.json").exists():
        man = json.loads((pkg_dir / "manifest.json").read_text())
        export_s = sum(man["build"]["stage_seconds"].values())
    else:
        man = export_package(lm, pkg_dir, formats="both", max_seq_len=a.max_seq_len, max_chunk=32, force=True,
                             log=lambda s: print(s, file=sys.stderr))
        export_s = time.perf_counter() - t0
    if a.export_only:
        return
    pkg = load_package(pkg_dir)
    kw = dict(prompt_len=a.prompt_len, gen_len=a.gen_len, reps=a.reps)
    results = {}
    eager_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in lm.model.parameters()}.values())
    print("bench eager ...", file=sys.stderr)
    results["eager"] = bench_backend(EagerBackend(lm.model, max_chunk=32), weight_bytes=eager_bytes, **kw)
    print("bench executorch (python) ...", file=sys.stderr)
    results["executorch"] = bench_backend(pkg.backend("executorch", threads=a.threads),
                                          weight_bytes=pkg.weight_bytes("executorch"), **kw)
    try:
        import edgekit.runtime.native  # noqa: F401

        print("bench native runner ...", file=sys.stderr)
        results["native"] = bench_native_pte(pkg.program_path("executorch"), a.prompt_len, a.gen_len, a.reps,
                                             lm.args.vocab_size, a.threads, pkg.weight_bytes("executorch"))
    except ImportError:
        results["native"] = {"skipped": "edgekit.runtime.native not available"}
    except Exception as e:  # report, do not lose the other numbers
        results["native"] = {"error": f"{type(e).__name__}: {e}"}
    print("bench onnxruntime ...", file=sys.stderr)
    results["onnx"] = bench_backend(pkg.backend("onnx", threads=a.threads),
                                    weight_bytes=pkg.weight_bytes("onnx"), **kw)
    bw = memory_bandwidth_gbs(a.threads)
    for r in results.values():
        if "gb_s" in r:
            r["roofline_fraction"] = round(r["gb_s"]["median"] / bw["read_gb_s"], 3)
    report = {
        "model": "smollm2-135m shape, random fp32 weights" + (f", n_layers={a.layers} (smoke)" if a.layers else ""), "max_seq_len": a.max_seq_len,
        "threads": a.threads, "prompt_len": a.prompt_len, "gen_len": a.gen_len, "reps": a.reps,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg": os.getloadavg()},
        "memory_bandwidth": bw, "export_seconds": round(export_s, 1),
        "export_stages": man["build"]["stage_seconds"],
        "xnnpack": {k: man["programs"]["executorch"][k] for k in
                    ("delegated_nodes", "total_nodes", "delegate_calls", "portable_ops")},
        "sizes": {k: v["size"] for k, v in man["programs"].items()},
        "results": results,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_smollm2.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [f"# SmolLM2-135M shape (random fp32), max_seq_len {a.max_seq_len}, {a.threads} threads",
             "", f"prompt {a.prompt_len}, gen {a.gen_len}, {a.reps} reps (+1 warm-up); memory read bandwidth "
             f"{bw['read_gb_s']} GB/s ({bw['method']}); load avg at end {os.getloadavg()[0]:.1f}", "",
             "| runtime | decode tok/s (median [min-max]) | prefill tok/s | TTFT ms | GB/s | of roofline |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "decode_tok_s" not in r:
            lines.append(f"| {name} | {r.get('skipped') or r.get('error')} | | | | |")
            continue
        d = r["decode_tok_s"]
        lines.append(f"| {name} | {d['median']:.1f} [{d['min']:.1f}-{d['max']:.1f}] | "
                     f"{r['prefill_tok_s']['median']:.0f} | {r['ttft_ms']['median']:.0f} | "
                     f"{r['gb_s']['median']:.2f} | {r['roofline_fraction']:.0%} |")
    lines += ["", f"export: {export_s:.0f} s; XNNPACK {report['xnnpack']['delegated_nodes']}/"
                  f"{report['xnnpack']['total_nodes']} ops in {report['xnnpack']['delegate_calls']} delegate calls"]
    (out / "export_smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
