"""One bench protocol for every backend: warm-up not counted, reps with median and spread,
prefill and decode timed separately, peak RSS, weight bytes and achieved GB/s.

Decode is measured after a real prompt (not from an empty cache): each rep resets the engine,
prefills ``prompt_len`` tokens (the time to first token is prefill + picking the first token),
then decodes ``gen_len`` tokens greedily one at a time with stop tokens ignored.
``gb_s = weight_bytes * decode_tok_s / 1e9``: the weight bytes one decode step must read.

Example::

    be = load_package("out/stories").backend("executorch")
    r = bench_backend(be, prompt_len=64, gen_len=64, reps=5, weight_bytes=1_300_000)
    r["decode_tok_s"]["median"], r["gb_s"]["median"]
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any

import torch

from edgekit.errors import UserError


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1 << 20) if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def summarize(xs: list[float]) -> dict[str, float]:
    """median, min, max, and the inter-quartile range when there are at least 4 values."""
    s = sorted(xs)
    d = {"median": statistics.median(s), "min": s[0], "max": s[-1]}
    if len(s) >= 4:
        q = statistics.quantiles(s, n=4)
        d["iqr"] = q[2] - q[0]
    return d


def bench_prompt(prompt_len: int, vocab_size: int, seed: int = 0) -> list[int]:
    """Deterministic pseudo-random prompt ids (content does not change the cost)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, max(vocab_size, 4), (prompt_len,), generator=g).tolist()


def bench_backend(backend, prompt_len: int = 64, gen_len: int = 64, reps: int = 5,
                  weight_bytes: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Run the protocol on ``backend`` (any engine Backend). Returns per-rep runs and summaries
    ``{ttft_ms, prefill_tok_s, decode_tok_s, gb_s}`` each ``{median, min, max[, iqr]}``."""
    from edgekit.runtime.engine import Engine

    if prompt_len < 1 or gen_len < 2 or reps < 1:
        raise UserError(f"bad bench sizes (prompt_len {prompt_len}, gen_len {gen_len}, reps {reps})",
                        "use --prompt-len >= 1, --gen-len >= 2, --reps >= 1")
    if prompt_len + gen_len > backend.max_seq_len:
        raise UserError(f"prompt_len + gen_len = {prompt_len + gen_len} > max_seq_len {backend.max_seq_len}",
                        "use shorter --prompt-len / --gen-len or re-export with a larger --max-seq-len")
    ids = bench_prompt(prompt_len, backend.vocab_size, seed)
    eng = Engine(backend, None, stop_ids=[])
    runs = []
    for rep in range(reps + 1):  # rep 0 is the warm-up
        eng.reset()
        t0 = time.perf_counter()
        logits = eng.prefill(ids)
        tok = int(torch.argmax(logits))
        t1 = time.perf_counter()
        for _ in range(gen_len):
            tok = int(torch.argmax(eng.step([tok])[-1]))
        t2 = time.perf_counter()
        if rep == 0:
            continue
        r = {"ttft_ms": (t1 - t0) * 1e3, "prefill_tok_s": prompt_len / (t1 - t0),
             "decode_tok_s": gen_len / (t2 - t1)}
        if weight_bytes:
            r["gb_s"] = weight_bytes * r["decode_tok_s"] / 1e9
        runs.append(r)
    out: dict[str, Any] = {"backend": getattr(backend, "name", type(backend).__name__),
                           "prompt_len": prompt_len, "gen_len": gen_len, "reps": reps,
                           "weight_bytes": weight_bytes, "runs": runs}
    for k in runs[0]:
        out[k] = summarize([r[k] for r in runs])
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def bench_native_pte(pte_path, prompt_len: int, gen_len: int, reps: int, vocab_size: int,
                     threads: int | None = None, weight_bytes: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The same protocol in the native runner (``edgekit.runtime.native.bench_native``), reported
    in this module's shape."""
    from edgekit.runtime.run import native_module

    nat = native_module()
    if not hasattr(nat, "bench_native"):
        raise UserError("edgekit.runtime.native has no bench_native()", "drop --native")
    ids = bench_prompt(prompt_len, vocab_size, seed)
    r = nat.bench_native(pte_path, ids, gen_len, reps, threads=threads)
    runs = [{"ttft_ms": x["ttft_ms"], "prefill_tok_s": x["prefill_tok_s"],
             "decode_tok_s": x["decode_tok_s"]} for x in r["runs"]]
    if weight_bytes:
        for x in runs:
            x["gb_s"] = weight_bytes * x["decode_tok_s"] / 1e9
    out: dict[str, Any] = {"backend": "native", "prompt_len": prompt_len, "gen_len": gen_len, "reps": reps,
                           "weight_bytes": weight_bytes, "runs": runs}
    for k in runs[0]:
        out[k] = summarize([x[k] for x in runs])
    out["peak_rss_mib"] = r.get("peak_rss_mib")
    out["native"] = {k: v for k, v in r.items() if k != "runs"}
    return out


def bench_package(package, backend: str = "executorch", prompt_len: int = 64, gen_len: int = 64,
                  reps: int = 5, threads: int | None = None, native: bool = False,
                  source: str | None = None) -> dict[str, Any]:
    """Bench a package's program (or, with ``backend="eager"``, the eager model of its source
    checkpoint). ``package`` is a path or a loaded ``Package``."""
    from edgekit.runtime.package import Package, load_package

    pkg = package if isinstance(package, Package) else load_package(package)
    m = pkg.manifest
    if threads:
        torch.set_num_threads(threads)
    if native:
        if backend not in ("executorch", None):
            raise UserError("--native benches the ExecuTorch program", "drop --backend or use executorch")
        res = bench_native_pte(pkg.program_path("executorch"), prompt_len, gen_len, reps,
                               pkg.args.vocab_size, threads, pkg.weight_bytes("executorch"))
        res["file_bytes"] = int(m["programs"]["executorch"]["size"])
    elif backend == "eager":
        from edgekit.models.load import load_model
        from edgekit.runtime.engine import EagerBackend

        src = source or m["source"]["path"]
        lm = load_model(src, max_seq_len=m["max_seq_len"])
        wb = sum(p.numel() * p.element_size() for p in {id(p): p for p in lm.model.parameters()}.values())
        res = bench_backend(EagerBackend(lm.model, max_chunk=m["max_chunk"]), prompt_len, gen_len, reps, wb)
    else:
        be = pkg.backend(backend, threads=threads)
        res = bench_backend(be, prompt_len, gen_len, reps, pkg.weight_bytes(be.name))
        res["file_bytes"] = int(m["programs"][be.name]["size"])
    res["package"] = str(pkg.dir)
    res["threads"] = threads or torch.get_num_threads()
    return res


def bench_spec(package, draft: str, budget_mb: float | None = None, backend: str | None = None,
               prompt: str = "Once upon a time", gen_len: int = 64, reps: int = 3,
               threads: int | None = None, draft_k: int | None = None, tree: str | None = None,
               native: bool = False) -> dict[str, Any]:
    """Speculative decoding bench of a package with ``draft`` (``early-exit:K`` | a draft package
    path | ``self-quant:..`` for eager) under an optional budget.

    The acceptance length depends on the text, so a real prompt is used (not random ids). Each of
    ``reps`` counted runs (after one warm-up) resets the session and generates ``gen_len``
    tokens greedily (stops honoured); plain greedy decoding on the same target is timed the
    same way for the speedup. Returns ``tau`` (tokens per verification), ``decode_tok_s``,
    ``plain_decode_tok_s`` and ``speedup`` (each ``{median, min, max}``), the accounted memory
    (``memory``: bytes per SpecMemo term, ``generation_bytes``) and the measured one
    (``peak_rss_mib``; ``baseline_rss_mib`` = peak before the session was opened;
    ``generation_rss_mib`` = peak - baseline - weights).
    """
    from edgekit.cli.chat import open_session
    from edgekit.runtime.engine import SamplingConfig

    if gen_len < 2 or reps < 1:
        raise UserError(f"bad bench sizes (gen_len {gen_len}, reps {reps})", "use --gen-len >= 2, --reps >= 1")
    if threads:
        torch.set_num_threads(threads)
    base_rss = peak_rss_mib()
    s = open_session(str(package), draft=draft, budget_mb=budget_mb, tree=tree, draft_k=draft_k,
                     sampling=SamplingConfig(), backend=backend, threads=threads)
    runs = []
    nat = dp = None
    if native:
        from edgekit.runtime.run import native_draft_path, native_module

        if s.resizable or tree:
            raise UserError("--native benches a package's ExecuTorch programs with chains",
                            "pass a package and drop --tree")
        nat = native_module()
        dp = native_draft_path(s.package, draft)
        ids = s.tokenizer.encode(prompt)
        k = draft_k or 4
        r = nat.bench_native(s.package.program_path("executorch"), ids, gen_len, reps, threads=threads,
                             draft_pte=dp, draft_k=k)
        plain = nat.bench_native(s.package.program_path("executorch"), ids, gen_len, reps, threads=threads)
        from edgekit.runtime.spec import SpecConfig

        s.current_spec = SpecConfig(k=k)
        for x, p in zip(r["runs"], plain["runs"]):
            runs.append({"tau": x["tau"], "steps": x["steps"], "decode_tok_s": x["decode_tok_s"],
                         "plain_decode_tok_s": p["decode_tok_s"], "draft_ms": x["draft_ms"],
                         "verify_ms": x["verify_ms"]})
        rss = r.get("peak_rss_mib") or 0
        # Baseline of the runner process: runtime + the target program loaded (no generation).
        base_rss = nat.program_info(s.package.program_path("executorch"), threads=threads).get("peak_rss_mib") or 0
        spec_label = f"chain k={k}"
    else:
        spec_label = "none"
        for rep in range(reps + 1):  # rep 0 is the warm-up
            s.reset()
            res = s.turn(prompt, gen_len)
            rec = s.turns[-1]
            spec_label = rec.spec
            s.reset()
            pr = s.engine.generate(s.tokenizer.encode(prompt, bos=True), gen_len)
            s.engine.reset()
            if rep == 0:
                continue
            runs.append({"tau": rec.tau, "steps": getattr(res, "steps", 0),
                         "decode_tok_s": res.timings.to_dict()["decode_tok_s"],
                         "plain_decode_tok_s": pr.timings.to_dict()["decode_tok_s"],
                         "new_tokens": len(res.tokens), "same_tokens": res.tokens == pr.tokens})
        rss = peak_rss_mib()
    for x in runs:
        x["speedup"] = (x["decode_tok_s"] / x["plain_decode_tok_s"]
                        if x["decode_tok_s"] and x["plain_decode_tok_s"] else None)
    rep_mem = s.report()
    weights = rep_mem["memory"].get("weights", 0)
    out: dict[str, Any] = {"package": str(package), "draft": draft, "backend": "native" if native else s.engine.backend.name,
                           "spec": spec_label, "prompt": prompt, "gen_len": gen_len, "reps": reps,
                           "budget_mb": budget_mb, "runs": runs}
    for key in ("tau", "decode_tok_s", "plain_decode_tok_s", "speedup"):
        vals = [x[key] for x in runs if x.get(key) is not None]
        out[key] = summarize(vals) if vals else None
    out["memory"] = rep_mem
    out["weights_mib"] = weights / (1 << 20)
    out["peak_rss_mib"] = rss
    out["baseline_rss_mib"] = base_rss
    if native:
        # The runner is its own process: baseline = its peak after loading the target only.
        out["generation_rss_mib"] = rss - base_rss - s.memo.draft_weight_bytes / (1 << 20)
        out["rss_note"] = ("native: peak RSS of the speculative runner minus the peak of a runner that only "
                           "loaded the target program, minus the draft's weights")
    else:
        out["generation_rss_mib"] = rss - base_rss - weights / (1 << 20)
        out["rss_note"] = ("peak RSS of this process minus its peak before the session opened minus weights; "
                           "includes the runtime's own allocations and, for a package's early-exit draft, "
                           "the draft program's duplicated weights are in weights")
    out["threads"] = threads or torch.get_num_threads()
    return out
