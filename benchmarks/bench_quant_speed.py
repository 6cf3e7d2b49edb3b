"""Decode speed of quantized packages vs llama.cpp, on SmolLM2-135M / Qwen2.5-0.5B shapes.

For each shape (random weights, ``edgekit.models.config.SHAPES``, qkv biases dropped so that
llama.cpp's llama architecture holds the same tensors) and each weight format fp32 / w8 / w4g32 /
w2g64 (round-to-nearest; the LM head quantized too: 8 bits for w8, 4-bit g32 for w4 and w2, the
embedding lookup stays fp32), export an ExecuTorch + ONNX package and measure decode tok/s:

- ExecuTorch through the native runner (``bench_native``),
- onnxruntime through ``OnnxBackend`` (edgekit's bench protocol),
- llama.cpp (llama-cpp-python, optional) on GGUF files written from the *same* float weights
  (llama architecture, F32) and quantized by llama.cpp itself to Q8_0 / Q4_0 / Q2_K; the real
  bits per weight of each file come from reading its tensor types back (gguf.GGUFReader).

Protocol: everything is exported first, untimed. Then ``--rounds`` rounds each time one
generation of every row (after a warm-up generation in the same process), the rows interleaved
and their order reversed every other round; a row's number is the median over rounds. This 2-core
VM's speed drifts by 20% within minutes and is sometimes disturbed for seconds, which with all
reps of a row back to back hit whole rows (a table row at 357 tok/s whose package ran at
593-658 in the rounds of the same run). The llama.cpp ratios are also given as the median of
per-round ratios.

Each row also gives bytes read per decoded token (all weights except the embedding table, of
which one row is read; a tied embedding counts as the head; plus the KV cache the attention
reads, at the mean context of the timed decode steps, in the runtime's cache type: float32 in
our programs, float16 in llama.cpp's default) and the share of the bandwidth roofline:
``tok/s * bytes_per_token / measured read bandwidth``. The weights alone are
``weight_bytes_per_token``. The bandwidth (``torch.sum`` over
256 MiB) is read once per round, among the rows, and the roofline is the highest of those reads:
this VM's read bandwidth moves between ~54 and ~82 GB/s within minutes, and with the median read
as the roofline (session 5's choice) a float row measured 109% of it. The share against the
median read is reported too (``roofline_share_vs_median_bw``), and the w2 target also as the
median of per-round shares (each round's row against that round's read).

Each round also records the core-to-core round trip of a cache line between the two threads
(``edgekit.kernels.cpu.core_roundtrip_ns``). On the 2-vCPU KVM the fast-bandwidth state comes
with ~360 ns round trips, the slow one with ~75 ns (likely vCPUs on two CCDs vs one). The float
rows speed up in the first state; the 2-bit rows, bound by their own execution and by 120
fork-join regions per token, slow down in it. Everything runs on 2 threads.

Writes ``benchmarks/results/quant_speed.json`` and ``quant_speed.md``.

    python benchmarks/bench_quant_speed.py --shapes smollm2-135m qwen2.5-0.5b --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_export_smollm2 import random_model  # noqa: E402

from edgekit.models.config import SHAPES  # noqa: E402
from edgekit.models.load import LoadedModel  # noqa: E402

VARIANTS = {  # name -> (preset, head_bits, head_group, act_bits); None preset = fp32. Target rows first.
    # "a8": int8 activations per group (QuantConfig.act_bits=8, the kernels' integer path; llama.cpp
    # likewise multiplies its Q2_K/Q4_0/Q8_0 weights with Q8 activations). Without: float activations.
    "w2g64a8": ("w2g64", 4, 32, 8), "w4g32a8": ("w4g32", 4, 32, 8), "w8a8": ("w8", 8, None, 8),
    "w2g64": ("w2g64", 4, 32, None), "w4g32": ("w4g32", 4, 32, None), "fp32": (None, None, None, None),
    "w8": ("w8", 8, None, None)}
GGUF_TYPES = {"Q8_0": 7, "Q4_0": 2, "Q2_K": 10}  # llama_ftype values


def log(s: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)


def random_float_model(shape: str, seq: int, seed: int = 0, n_layers: int | None = None) -> LoadedModel:
    return random_model(seq, seed, n_layers, shape=shape, qkv_bias=False)


def decode_bytes(model: torch.nn.Module) -> int:
    """Weight bytes one decode step reads: every linear (packed or float, a tied head once as the
    head), the norms, and one embedding row."""
    from edgekit.quant.modules import _PackedLinear

    total = 0
    for name, m in model.named_modules():
        if isinstance(m, _PackedLinear):
            total += sum(b.numel() * b.element_size() for b in (m.qweight, m.scale, m.zero))
        elif isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    total += sum(p.numel() * 4 for n, p in model.named_parameters() if "norm" in n)
    emb = model.tok_embeddings
    w = getattr(emb, "weight", None)
    if w is not None:
        total += w.shape[1] * w.element_size()
    return total


def kv_read_bytes(args, prompt_len: int, gen_len: int, elem_bytes: int) -> int:
    """KV cache bytes one decode step reads, averaged over the timed steps: K and V of every layer
    and KV head over the visible positions, prompt_len + 1 .. prompt_len + gen_len."""
    mean_ctx = prompt_len + (gen_len + 1) / 2
    return int(2 * args.n_layers * args.n_kv_heads * args.head_dim * elem_bytes * mean_ctx)


# --- llama.cpp ------------------------------------------------------------------------------------

def write_gguf_f32(lm: LoadedModel, path: Path) -> None:
    """Our float weights as a llama-architecture F32 GGUF (tied head: no output.weight)."""
    import gguf

    a = lm.args
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("edgekit-random")
    w.add_context_length(a.max_seq_len)
    w.add_embedding_length(a.dim)
    w.add_block_count(a.n_layers)
    w.add_feed_forward_length(a.hidden_dim)
    w.add_head_count(a.n_heads)
    w.add_head_count_kv(a.n_kv_heads)
    w.add_rope_freq_base(a.rope_theta)
    w.add_layer_norm_rms_eps(a.norm_eps)
    w.add_rope_dimension_count(a.head_dim)
    w.add_vocab_size(a.vocab_size)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>".encode() for i in range(a.vocab_size)])
    w.add_token_scores([0.0] * a.vocab_size)
    w.add_token_types([1] * a.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    sd = lm.model.state_dict()
    f = lambda k: sd[k].detach().float().numpy()  # noqa: E731
    w.add_tensor("token_embd.weight", f("tok_embeddings.weight"))
    w.add_tensor("output_norm.weight", f("norm.weight"))
    if not a.tie_embeddings:
        w.add_tensor("output.weight", f("output.weight"))
    names = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
             "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up",
             "feed_forward.w2": "ffn_down", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}
    for i in range(a.n_layers):
        for ours, theirs in names.items():
            w.add_tensor(f"blk.{i}.{theirs}.weight", f(f"layers.{i}.{ours}.weight"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_quantize(src: Path, dst: Path, ftype: int, threads: int) -> None:
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), p)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize -> {rc}")


def gguf_stats(path: Path, vocab: int, tied: bool) -> dict:
    """Types, real bits per weight and bytes read per token of a GGUF file."""
    import gguf

    r = gguf.GGUFReader(str(path))
    types: dict[str, int] = {}
    n_w = n_b = read = 0
    for t in r.tensors:
        ne = int(np.prod([int(x) for x in t.shape]))
        nb = int(t.n_bytes)
        tn = t.tensor_type.name
        if t.name.endswith("_norm.weight") or t.name == "output_norm.weight":
            read += nb
            continue
        types[tn] = types.get(tn, 0) + 1
        n_w += ne
        n_b += nb
        if t.name == "token_embd.weight" and not tied:
            read += nb // vocab  # one row
        else:
            read += nb
    return {"types": types, "bits_per_weight": round(8 * n_b / n_w, 3), "bytes_per_token": read,
            "file_bytes": path.stat().st_size}


def bench_llama_cpp(path: Path, prompt: list[int], gen_len: int, reps: int, threads: int) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=len(prompt) + gen_len + 8, n_threads=threads,
                          n_threads_batch=threads, n_batch=64, verbose=False)
    rates = []
    for rep in range(reps + 1):  # rep 0 = warm-up
        llm.reset()
        llm.eval(prompt)
        tok = prompt[-1]
        t0 = time.perf_counter()
        for i in range(gen_len):
            llm.eval([tok])
            tok = 3 + (tok * 7 + i) % 200
        dt = time.perf_counter() - t0
        if rep:
            rates.append(gen_len / dt)
    del llm
    return _summary(rates)


# --- ours -----------------------------------------------------------------------------------------

def export_variant(shape: str, variant: str, work: Path, seq: int, n_layers: int | None, reuse: bool = False):
    from edgekit.export.builder import export_package
    from edgekit.export.package import read_manifest
    from edgekit.quant import preset_config, quantize_

    lm = random_float_model(shape, seq, n_layers=n_layers)
    d = work / f"{shape}-{variant}"
    if reuse and (d / "manifest.json").exists():  # exported by an earlier --export-only run
        man = read_manifest(d)
        if man.get("quantization"):  # the same RTN result: bytes per token come from the modules
            from edgekit.quant import QuantConfig

            quantize_(lm.model, QuantConfig.from_dict(man["quantization"]))
        return lm, d, man, float(sum(man["build"]["stage_seconds"].values()))
    preset, hb, hg, ab = VARIANTS[variant]
    hook = None
    if preset:
        # grid=1: plain min/max rounding (the shrink search only changes quality, not speed)
        cfg = preset_config(preset, method="rtn", head_bits=hb, head_group_size=hg, grid=1, act_bits=ab)

        def hook(m):
            quantize_(m, cfg)
            return cfg.to_dict()
    t0 = time.perf_counter()
    man = export_package(lm, d, formats="both", max_chunk=32, force=True, quant=hook, verify=False,
                         log=lambda s: None)
    return lm, d, man, time.perf_counter() - t0


def _summary(rates: list[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": rates}


def prepare(a, work: Path, have_llama: bool) -> list[dict]:
    """Untimed: GGUF files and packages for every (shape, format). Returns the table's rows, each
    with an ``_once`` callable that times one generation (after its own warm-up)."""
    from edgekit.runtime.backends import OnnxBackend
    from edgekit.runtime.bench import bench_backend, bench_prompt
    from edgekit.runtime.native import bench_native

    rows = []
    for shape in a.shapes:
        vocab = SHAPES[shape].vocab_size
        prompt = bench_prompt(a.prompt_len, vocab)
        if have_llama:
            lm = random_float_model(shape, a.max_seq_len, n_layers=a.layers)
            f32 = work / f"{shape}-f32.gguf"
            write_gguf_f32(lm, f32)
            for qt, ft in GGUF_TYPES.items():
                q = work / f"{shape}-{qt}.gguf"
                log(f"{shape} llama.cpp {qt}: quantize")
                gguf_quantize(f32, q, ft, a.threads)
                st = gguf_stats(q, lm.args.vocab_size, lm.args.tie_embeddings)
                kv = kv_read_bytes(lm.args, a.prompt_len, a.gen_len, 2)  # llama.cpp's default f16 cache
                st["weight_bytes_per_token"] = st["bytes_per_token"]
                st["kv_bytes_per_token"] = kv
                st["bytes_per_token"] += kv
                rows.append({"shape": shape, "runtime": "llama.cpp", "format": qt, **st,
                             "_once": lambda q=q, p=prompt: bench_llama_cpp(q, p, a.gen_len, 1, a.threads)["median"]})
            f32.unlink()
        for variant in a.variants:
            log(f"{shape} {variant}: export")
            lm, d, man, secs = export_variant(shape, variant, work, a.max_seq_len, a.layers, reuse=a.reuse)
            if a.export_only:
                log(f"  exported in {secs:.0f} s -> {d}")
                continue
            wbt = decode_bytes(lm.model)
            kv = kv_read_bytes(lm.args, a.prompt_len, a.gen_len, 4)  # float32 caches
            bpt = wbt + kv
            pte = d / "model.pte"
            rows.append({"shape": shape, "runtime": "executorch-native", "format": variant, "export_s": round(secs, 1),
                         "bytes_per_token": bpt, "weight_bytes_per_token": wbt, "kv_bytes_per_token": kv,
                         "file_bytes": man["programs"]["executorch"]["size"],
                         "custom_ops": man["programs"]["executorch"].get("custom_ops", []),
                         "_once": lambda pte=pte, p=prompt: bench_native(pte, p, a.gen_len, 1, threads=a.threads)
                         ["decode_tok_s"]["median"]})

            def ort_once(d=d, lm=lm, man=man) -> float:
                be = OnnxBackend(d / "model.onnx", lm.args.n_layers, man["max_seq_len"], lm.args.vocab_size,
                                 max_chunk=man["max_chunk"], threads=a.threads)
                try:
                    return bench_backend(be, prompt_len=a.prompt_len, gen_len=a.gen_len, reps=1)["decode_tok_s"]["median"]
                finally:
                    del be
            rows.append({"shape": shape, "runtime": "onnxruntime", "format": variant, "bytes_per_token": bpt,
                         "weight_bytes_per_token": wbt, "kv_bytes_per_token": kv,
                         "file_bytes": man["programs"]["onnx"]["size"],
                         "custom_ops": man["programs"]["onnx"].get("custom_ops", []), "_once": ort_once})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7,
                    help="timed rounds; each round times one generation of every row, rows interleaved")
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--layers", type=int, help="override n_layers (smoke runs only)")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--onnx-accuracy-level", type=int, default=4, help="MatMulNBits accuracy_level (4 = int8 activations)")
    ap.add_argument("--work", help="directory for packages and GGUF files (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--export-only", action="store_true",
                    help="only export the packages into --work (untimed; can run while the box is busy)")
    ap.add_argument("--reuse", action="store_true", help="time packages an --export-only run left in --work")
    a = ap.parse_args()

    from edgekit.profile.host import measure_bandwidth

    import edgekit.export.quant_lower as quant_lower

    # onnxruntime's fast MatMulNBits path (int8 activations); packages default to exact level 0
    quant_lower.ACCURACY_LEVEL = a.onnx_accuracy_level
    torch.set_num_threads(a.threads)
    work = Path(a.work or tempfile.mkdtemp(prefix="edgekit-qspeed-"))
    work.mkdir(parents=True, exist_ok=True)
    have_llama = False
    if not (a.no_llama_cpp or a.export_only):
        try:
            import llama_cpp  # noqa: F401

            have_llama = True
        except ImportError as e:
            log(f"llama-cpp-python not importable ({e}); llama.cpp rows skipped")
    try:
        rows = prepare(a, work, have_llama)
        if a.export_only:
            return

        def read_bw() -> float:
            return [x for x in measure_bandwidth([a.threads], 256, 3) if x.kind == "read"][0].gbps

        from edgekit.kernels.cpu import core_roundtrip_ns

        load0 = os.getloadavg()
        bw_samples: list[float] = []  # one read per round, timed among the rows
        rt_samples: list[float] = []  # and one core-to-core round trip (ns) right after it
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)

        def save(done: int) -> dict:  # after every round: a partial table survives an interrupted run
            bw = statistics.median(bw_samples)
            table = []
            for r in rows:
                t = {k: v for k, v in r.items() if not k.startswith("_")}
                t["decode_tok_s"] = _summary(r["_rates"])
                t["gb_s"] = round(r["bytes_per_token"] * t["decode_tok_s"]["median"] / 1e9, 3)
                t["roofline_share"] = round(t["gb_s"] / max(bw_samples), 3)
                t["roofline_share_vs_median_bw"] = round(t["gb_s"] / bw, 3)
                table.append(t)
            res = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": a.threads,
                   "read_bandwidth_gb_s": bw, "read_bandwidth_max_gb_s": max(bw_samples),
                   "read_bandwidth_samples": bw_samples, "core_roundtrip_ns_samples": rt_samples,
                   "load_avg_start": load0, "load_avg_end": os.getloadavg(), "prompt_len": a.prompt_len,
                   "gen_len": a.gen_len, "rounds": done, "layers_override": a.layers,
                   "variants": {k: {"preset": v[0], "head_bits": v[1], "head_group": v[2], "act_bits": v[3]}
                                for k, v in VARIANTS.items()},
                   "onnx_accuracy_level": a.onnx_accuracy_level, "rows": table, "targets": targets(table, bw_samples)}
            (out / "quant_speed.json").write_text(json.dumps(res, indent=2) + "\n")
            (out / "quant_speed.md").write_text(markdown(res))
            return res

        for r in rows:
            r["_rates"], r["utc"] = [], []
        for k in range(a.rounds):
            # alternate the order so that no row always runs first or right after the same neighbour;
            # None: the round's bandwidth read
            for r in ([None, *rows] if k % 2 == 0 else [*rows[::-1], None]):
                if r is None:
                    bw_samples.append(round(read_bw(), 2))
                    rt_samples.append(round(core_roundtrip_ns(), 1))
                    continue
                r["_rates"].append(r["_once"]())
                r["utc"].append(time.strftime("%H:%M:%S", time.gmtime()))
            log(f"round {k + 1}/{a.rounds}: read bandwidth {bw_samples[-1]:.1f} GB/s, core round trip "
                f"{rt_samples[-1]:.0f} ns; " + ", ".join(
                f"{r['shape'][:6]} {r['runtime'][:4]} {r['format']} {r['_rates'][-1]:.0f}" for r in rows))
            save(k + 1)
        print(markdown(save(a.rounds)))
    finally:  # packages of every row stay until the last round; a temp --work goes with the run
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


def _rate(rows, shape, runtime, fmt):
    for r in rows:
        if r["shape"] == shape and r["runtime"] == runtime and r["format"] == fmt:
            return r
    return None


def _best(rows, shape, runtime, fmts):
    got = [r for f in fmts if (r := _rate(rows, shape, runtime, f))]
    return max(got, key=lambda r: r["decode_tok_s"]["median"]) if got else None


def targets(rows, bw_samples: list[float]) -> list[dict]:
    """The three targets per shape, from the table's medians, and each also as the median of
    per-round ratios: both llama.cpp files, or the row and the bandwidth read, were timed seconds
    apart in the same round."""
    out = []
    for shape in sorted({r["shape"] for r in rows}):
        # ours: the faster of the float- and int8-activation builds of each format
        w2 = _best(rows, shape, "executorch-native", ("w2g64", "w2g64a8"))
        w4 = _best(rows, shape, "executorch-native", ("w4g32", "w4g32a8"))
        for ours, qt, need in ((w2, "Q2_K", 1.5), (w4, "Q4_0", 1.0)):
            theirs = _rate(rows, shape, "llama.cpp", qt)
            if not (ours and theirs):
                continue
            x = ours["decode_tok_s"]["median"] / theirs["decode_tok_s"]["median"]
            per_round = statistics.median(m / t for m, t in zip(ours["decode_tok_s"]["runs"],
                                                               theirs["decode_tok_s"]["runs"]))
            out.append({"shape": shape, "target": f"{ours['format']} >= {need:g}x llama.cpp {qt}",
                        "ratio": round(x, 2), "median_round_ratio": round(per_round, 2), "met": x >= need})
        if w2:
            x = w2["roofline_share"]
            out.append({"shape": shape, "target": f"{w2['format']} >= 50% of roofline (highest read)",
                        "ratio": x, "met": x >= 0.5})
            # against the median read, and against each round's own read (median over rounds)
            per_round = statistics.median(w2["bytes_per_token"] * t / 1e9 / b
                                          for t, b in zip(w2["decode_tok_s"]["runs"], bw_samples))
            x = w2["roofline_share_vs_median_bw"]
            out.append({"shape": shape, "target": f"{w2['format']} >= 50% of the median bandwidth read",
                        "ratio": x, "median_round_ratio": round(per_round, 3), "met": x >= 0.5})
    return out


def markdown(res) -> str:
    lines = [f"# Quantized decode speed ({res['threads']} threads, roofline read bandwidth "
             f"{res['read_bandwidth_max_gb_s']:.2f} GB/s: highest of the per-round reads "
             f"{res.get('read_bandwidth_samples')}, median {res['read_bandwidth_gb_s']:.2f}; "
             f"core-to-core round trip per round {res.get('core_roundtrip_ns_samples')} ns; "
             f"load avg {res['load_avg_start'][0]:.2f} -> "
             f"{res['load_avg_end'][0]:.2f}; shared 2-core box, noisy)", "",
             f"prompt {res['prompt_len']}, decode {res['gen_len']} tokens. Median of {res['rounds']} rounds: each "
             "round times one generation of every row (after a warm-up generation in the same process), rows "
             "interleaved, so that a disturbance of a few seconds hits one sample of a row, not all of them. "
             "Random weights.", "",
             "| shape | runtime | format | bits/weight (file) | MB read/token (weights + KV) | decode tok/s (min-max) "
             "| GB/s | roofline "
             "| vs median read |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        d = r["decode_tok_s"]
        bpw = r.get("bits_per_weight", "")
        kv = r.get("kv_bytes_per_token", 0)
        mb = f"{r['bytes_per_token'] / 1e6:.1f} ({(r['bytes_per_token'] - kv) / 1e6:.1f} + {kv / 1e6:.1f})"
        lines.append(f"| {r['shape']} | {r['runtime']} | {r['format']} | {bpw} | {mb} | "
                     f"{d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f}) | {r['gb_s']:.2f} | {100 * r['roofline_share']:.0f}% "
                     f"| {100 * r['roofline_share_vs_median_bw']:.0f}% |")
    lines += ["", "llama.cpp tensor types:", ""]
    for r in res["rows"]:
        if r["runtime"] == "llama.cpp":
            lines.append(f"- {r['shape']} {r['format']}: {r['types']}")
    lines += ["", "| shape | target | ratio of medians | median of per-round ratios | met |", "|---|---|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['shape']} | {t['target']} | {t['ratio']} | {t.get('median_round_ratio', '')} | {t['met']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
