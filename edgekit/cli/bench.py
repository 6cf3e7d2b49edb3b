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
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Benchmark a package: TTFT, prefill and decode tok/s (median, min-max over reps), peak RSS, GB/s.

    Examples:
      edgekit bench out/stories --reps 5
      edgekit bench out/smollm --backend onnx --prompt-len 128 --gen-len 64 --threads 2 --json
      edgekit bench out/smollm --native --json
    """
    from edgekit.runtime.bench import bench_package

    log(f"benchmarking {package} ({'native' if native else backend}) ...")
    r = bench_package(package, backend=backend, prompt_len=prompt_len, gen_len=gen_len, reps=reps,
                      threads=threads, native=native)
    if json_out:
        emit_json(r)
        return
    from rich.table import Table

    t = Table(title=f"bench {package} [{r['backend']}] prompt {prompt_len}, gen {gen_len}, "
                    f"{reps} reps, {r['threads']} threads")
    for c in ("metric", "median", "min", "max"):
        t.add_column(c, justify="right" if c != "metric" else "left")
    for k, label in (("ttft_ms", "TTFT (ms)"), ("prefill_tok_s", "prefill tok/s"),
                     ("decode_tok_s", "decode tok/s"), ("gb_s", "achieved GB/s")):
        if k in r:
            s = r[k]
            t.add_row(label, f"{s['median']:.2f}", f"{s['min']:.2f}", f"{s['max']:.2f}")
    out.print(t)
    wb = r.get("weight_bytes")
    rss = r.get("peak_rss_mib")
    out.print(f"weight bytes {wb / 1e6:.1f} MB, peak RSS {rss:.0f} MiB" if wb and rss else
              f"weight bytes {wb}, peak RSS {rss}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
