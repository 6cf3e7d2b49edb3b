"""``edgekit bench``: prefill / decode speed, peak memory and achieved bandwidth of a package."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, log, out


def bench(
    package: Annotated[str, typer.Argument(help="Package directory written by `edgekit export`.")],
    *,
    backend: Annotated[str, typer.Option("--backend", "-b", help="executorch, onnx or eager (the source checkpoint).")] = "executorch",
    prompt_len: Annotated[int, typer.Option("--prompt-len", min=1)] = 64,
    gen_len: Annotated[int, typer.Option("--gen-len", min=2)] = 64,
    reps: Annotated[int, typer.Option("--reps", min=1, help="Counted repetitions (plus one warm-up).")] = 5,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1)] = None,
    native: Annotated[bool, typer.Option("--native", help="Bench the .pte in the native C++ runner.")] = False,
    spec: Annotated[Optional[str], typer.Option("--spec", help="Bench speculative decoding with this draft: early-exit:K, lookup[:N], a draft package directory, or self-quant:w4|w8 (checkpoint targets).")] = None,
    budget_mb: Annotated[Optional[float], typer.Option("--budget-mb", help="With --spec: one memory budget (MiB, weights included).")] = None,
    draft_k: Annotated[Optional[int], typer.Option("--draft-k", min=1, help="With --spec: fixed chain length (default: SpecMemo's choice; native: 4).")] = None,
    tree: Annotated[Optional[str], typer.Option("--tree", help="With --spec: tree drafting BRANCH,NODES (eager targets, or packages exported with --tree-verify).")] = None,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="With --spec: the prompt (acceptance depends on real text).")] = "Once upon a time",
    profile: Annotated[Optional[str], typer.Option("--profile", help="Device profile (e.g. `edgekit profile --out`): print the planner's predictions beside the measurements.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Benchmark a package: TTFT, prefill and decode tok/s (median, min-max over reps), peak RSS, GB/s.

    Examples:
      edgekit bench out/stories --reps 5
      edgekit bench out/smollm --backend onnx --prompt-len 128 --gen-len 64 --threads 2 --json
      edgekit bench out/smollm --native --json
      edgekit bench out/stories --spec early-exit:4 --budget-mb 8 --draft-k 4 --json
    """
    from edgekit.runtime.bench import bench_package

    if spec is not None:
        _bench_spec(package, spec, budget_mb=budget_mb, backend=None if backend == "executorch" else backend,
                    prompt=prompt, gen_len=gen_len, reps=reps, threads=threads, draft_k=draft_k, tree=tree,
                    native=native, json_out=json_out)
        return

    log(f"benchmarking {package} ({'native' if native else backend}) ...")
    r = bench_package(package, backend=backend, prompt_len=prompt_len, gen_len=gen_len, reps=reps,
                      threads=threads, native=native)
    pred = {}
    if profile and backend in ("executorch", "onnx"):
        from edgekit.plan.check import predicted_for_bench

        pred = predicted_for_bench(package, profile, kind=backend, native=native, prompt_len=prompt_len,
                                   gen_len=gen_len, threads=r.get("threads"))
        r["predicted"] = pred
    if json_out:
        emit_json(r)
        return
    from rich.table import Table

    t = Table(title=f"bench {package} [{r['backend']}] prompt {prompt_len}, gen {gen_len}, "
                    f"{reps} reps, {r['threads']} threads")
    cols = ("metric", "median", "min", "max") + (("predicted",) if pred else ())
    for c in cols:
        t.add_column(c, justify="right" if c != "metric" else "left")
    for k, label in (("ttft_ms", "TTFT (ms)"), ("prefill_tok_s", "prefill tok/s"),
                     ("decode_tok_s", "decode tok/s"), ("gb_s", "achieved GB/s")):
        if k in r:
            s = r[k]
            row = [label, f"{s['median']:.2f}", f"{s['min']:.2f}", f"{s['max']:.2f}"]
            if pred:
                row.append(f"{pred[k]:.2f}" if pred.get(k) is not None else "")
            t.add_row(*row)
    out.print(t)
    wb = r.get("weight_bytes")
    rss = r.get("peak_rss_mib")
    line = (f"weight bytes {wb / 1e6:.1f} MB, peak RSS {rss:.0f} MiB" if wb and rss else
            f"weight bytes {wb}, peak RSS {rss}")
    if pred:
        line += f" (predicted {pred['peak_rss_mib']:.0f} MiB on {pred['device']})"
    out.print(line, markup=False)


def _bench_spec(package: str, draft: str, *, json_out: bool, **kw) -> None:
    from edgekit.runtime.bench import bench_spec

    log(f"benchmarking speculative decoding of {package} with {draft} ...")
    r = bench_spec(package, draft, **kw)
    if json_out:
        emit_json(r)
        return
    from rich.table import Table

    from rich.markup import escape

    t = Table(title=escape(f"spec bench {package} [{r['backend']}, {r['spec']}]") + f" draft {escape(draft)}, gen {r['gen_len']}, "
                    f"{r['reps']} reps, {r['threads']} threads")
    for c in ("metric", "median", "min", "max"):
        t.add_column(c, justify="right" if c != "metric" else "left")
    for k, label in (("tau", "tau (tokens/verify)"), ("decode_tok_s", "spec decode tok/s"),
                     ("plain_decode_tok_s", "plain decode tok/s"), ("speedup", "speedup")):
        if r.get(k):
            x = r[k]
            t.add_row(label, f"{x['median']:.2f}", f"{x['min']:.2f}", f"{x['max']:.2f}")
    out.print(t)
    mem = r["memory"]
    out.print("accounted (MiB): " + ", ".join(f"{k} {v / 2**20:.3f}" for k, v in mem["memory"].items())
              + f"; generation {mem['generation_bytes'] / 2**20:.3f}", markup=False)
    out.print(f"measured: peak RSS {r['peak_rss_mib']:.0f} MiB, generation (peak - baseline - weights) "
              f"{r['generation_rss_mib']:.1f} MiB", markup=False)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
