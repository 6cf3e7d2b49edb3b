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
    json_out: Annotated[bool, typer.Option("--json", help="Print tokens, text and timings as JSON.")] = False,
) -> None:
    """Generate text from a package, streaming to stdout (checksums are verified first).

    Examples:
      edgekit run out/stories --prompt "Once upon a time" -n 32
      edgekit run out/stories --backend onnx --temperature 0.8 --top-p 0.9 --seed 1 --json
      edgekit run out/stories --native --json
    """
    from edgekit.runtime.engine import SamplingConfig
    from edgekit.runtime.package import load_package
    from edgekit.runtime.run import generate_from_package

    sampling = SamplingConfig(temperature, top_p, seed)
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
