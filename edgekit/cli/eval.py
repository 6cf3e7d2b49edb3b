"""``edgekit eval ppl``: sliding-window perplexity of a float checkpoint, a quantized checkpoint
or an exported package on a text corpus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, log, progress

eval_app = typer.Typer(help="Evaluate model quality.", no_args_is_help=True)

MODEL_HELP = ("Checkpoint (llama2.c .bin, HF directory, edgekit quantized checkpoint) or exported "
              "package directory (default: built-in stories260K).")


def default_corpus() -> Path | None:
    """``shared/corpora/tinystories_val.txt`` beside the working directory or this checkout."""
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for d in [start, *start.parents]:
            c = d / "shared" / "corpora" / "tinystories_val.txt"
            if c.is_file():
                return c
    return None


def resolve_backend(model: str | None, backend: str | None, max_chunk: int):
    """(backend, tokenizer, description) for a checkpoint or an exported package."""
    from edgekit.errors import UserError

    p = Path(model) if model else None
    if p is not None and p.is_dir() and (p / "manifest.json").exists():
        try:
            from edgekit.runtime.package import load_package
        except ImportError:
            raise UserError(f"{p} is an exported package but package loading is not available",
                            "evaluate the checkpoint it was exported from instead") from None
        pkg = load_package(p)
        return pkg.backend(backend), pkg.tokenizer, {"path": str(p), "format": "package",
                                                      "backend": backend or pkg.kinds[0]}
    if backend not in (None, "eager"):
        raise UserError(f"--backend {backend} needs an exported package", "omit --backend for checkpoints")
    from edgekit.models.load import load_model
    from edgekit.runtime.engine import EagerBackend

    lm = load_model(p)
    return (EagerBackend(lm.model, max_chunk=max_chunk), lm.tokenizer,
            {"path": lm.source.path, "format": lm.source.format, "backend": "eager", "quant": lm.quant})


@eval_app.command("ppl")
def ppl(
    model: Annotated[Optional[str], typer.Argument(help=MODEL_HELP)] = None,
    *,
    corpus: Annotated[Optional[str], typer.Option("--corpus", help="UTF-8 text file (default: "
                                                  "shared/corpora/tinystories_val.txt).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=2, help="Tokens scored.")] = 20000,
    window: Annotated[Optional[int], typer.Option("--window", min=2,
                                                  help="Window length (default: the model's context, max 256).")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="Package program: executorch | onnx.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Perplexity over the first --max-tokens tokens of a corpus (documents split at blank lines).

    Examples:
      edgekit eval ppl
      edgekit eval ppl out/stories-w2 --corpus ../shared/corpora/tinystories_val.txt --json
      edgekit eval ppl out/stories-pkg --backend onnx --max-tokens 5000
    """
    from edgekit.errors import UserError
    from edgekit.eval.ppl import perplexity

    cpath = Path(corpus) if corpus else default_corpus()
    if cpath is None:
        raise UserError("no corpus given and shared/corpora/tinystories_val.txt not found", "pass --corpus FILE")
    if not cpath.is_file():
        raise UserError(f"corpus {cpath} does not exist", "pass --corpus FILE (a UTF-8 text file)")
    text = cpath.read_text(encoding="utf-8", errors="replace")
    be, tok, desc = resolve_backend(model, backend, max_chunk=256)
    win = window or min(be.max_seq_len, 256)
    log(f"evaluating {desc['path']} ({desc['format']}, {desc['backend']}) on {cpath}, "
        f"{max_tokens} tokens, window {win}")
    t0 = time.perf_counter()
    with progress("perplexity", max_tokens) as advance:
        r = perplexity(be, tok, text, max_tokens=max_tokens, window=win, advance=advance)
    res = {"ppl": r.ppl, "nll": r.nll, "tokens": r.tokens, "window": r.window, "stride": r.stride,
           "corpus": str(cpath), "model": desc, "seconds": round(time.perf_counter() - t0, 3)}
    if json_out:
        emit_json(res)
    else:
        typer.echo(f"ppl {r.ppl:.4f}  ({r.tokens} tokens, window {r.window}, stride {r.stride})")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
