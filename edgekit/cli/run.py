"""``edgekit run``: generate from an exported package (ExecuTorch, onnxruntime or the native runner)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, log


def run(
    package: Annotated[str, typer.Argument(help="Package directory written by `edgekit export`.")],
    *,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt text.")] = "Once upon a time",
    backend: Annotated[Optional[str], typer.Option("--backend", "-b", help="executorch or onnx (default: executorch when present).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1)] = 64,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for the backend.")] = None,
    native: Annotated[bool, typer.Option("--native", help="Use the native C++ runner on the .pte (greedy only).")] = False,
    draft: Annotated[Optional[str], typer.Option("--draft", help="Speculative draft: early-exit:K (the package's draft program), lookup[:N] (prompt lookup, no model), self-quant:w4|w8 (eager only), or a draft package directory.")] = None,
    budget_mb: Annotated[Optional[float], typer.Option("--budget-mb", help="Memory budget (MiB, weights included) checked before loading anything else; exit 2 naming the minimum.")] = None,
    draft_k: Annotated[Optional[int], typer.Option("--draft-k", min=1, help="Fixed chain length (default: chosen by SpecMemo; native: 4).")] = None,
    tree: Annotated[Optional[str], typer.Option("--tree", help="Tree drafting BRANCH,NODES (eager targets, or packages exported with --tree-verify).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print tokens, text and timings as JSON.")] = False,
) -> None:
    """Generate text from a package, streaming to stdout (checksums are verified first).

    Examples:
      edgekit run out/stories --prompt "Once upon a time" -n 32
      edgekit run out/stories --backend onnx --temperature 0.8 --top-p 0.9 --seed 1 --json
      edgekit run out/stories --native --json
      edgekit run out/stories --draft early-exit:4 --budget-mb 8 --draft-k 4 --json
      edgekit run out/stories --native --draft out/stories-w8 --json
    """
    from edgekit.runtime.engine import SamplingConfig
    from edgekit.runtime.package import load_package
    from edgekit.runtime.run import generate_from_package

    sampling = SamplingConfig(temperature, top_p, seed)
    if draft is not None or budget_mb is not None or tree is not None:
        from edgekit.runtime.run import generate_spec

        res = generate_spec(package, prompt, draft or "none", budget_mb=budget_mb, draft_k=draft_k, tree=tree,
                            backend=backend, max_new_tokens=max_new_tokens, sampling=sampling,
                            threads=threads, native=native)
        if json_out:
            emit_json(res)
            return
        sys.stdout.write(prompt + res["text"] + "\n")
        t, mem = res["timings"], res["memory"]
        log(f"[{res['backend']}, {res['spec']}] tau {res['tau']:.2f}, {t['new_tokens']} tokens, "
            f"decode {t['decode_tok_s'] or 0:.1f} tok/s, stop: {res['stop_reason']}")
        log("memory (MiB): " + ", ".join(f"{k} {v / 2**20:.2f}" for k, v in mem["memory"].items())
            + f"; generation {mem['generation_bytes'] / 2**20:.2f} MiB")
        return
    pkg = load_package(package)

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if not json_out:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    res = generate_from_package(pkg, prompt, backend=backend, max_new_tokens=max_new_tokens,
                                sampling=sampling, threads=threads, native=native,
                                on_text=None if json_out else stream)
    if json_out:
        emit_json(res)
        return
    if native:
        sys.stdout.write(res["text"])
    sys.stdout.write("\n")
    t = res["timings"]
    log(f"[{res['backend']}] {t['new_tokens']} tokens, ttft {(t['ttft_s'] or 0) * 1e3:.1f} ms, "
        f"decode {t['decode_tok_s'] or 0:.1f} tok/s, stop: {res['stop_reason']}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
