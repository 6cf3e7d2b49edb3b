"""``edgekit generate``: eager generation from a checkpoint, streaming text to stdout."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, log

MODEL_HELP = "Checkpoint: llama2.c .bin, HF directory or edgekit checkpoint (default: built-in stories260K)."


def generate(
    model: Annotated[Optional[str], typer.Argument(help=MODEL_HELP)] = None,
    *,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt text.")] = "Once upon a time",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1)] = 64,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="llama2.c tokenizer .bin.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print tokens, text and timings as JSON.")] = False,
) -> None:
    """Generate text with the eager reference model.

    Examples:
      edgekit generate --prompt "Once upon a time" --max-new-tokens 32
      edgekit generate ./SmolLM2-135M --temperature 0.8 --top-p 0.9 --seed 1 --json
    """
    from edgekit.models.load import load_model
    from edgekit.runtime.engine import EagerBackend, Engine, SamplingConfig

    sampling = SamplingConfig(temperature, top_p, seed)
    lm = load_model(model, tokenizer_path=tokenizer)
    log(f"loaded {lm.source.path}: detected {lm.args.arch} architecture ({lm.source.format} format), "
        f"{sum(lm.args.n_params().values()):,} parameters")
    eng = Engine(EagerBackend(lm.model), lm.tokenizer)
    ids = lm.tokenizer.encode(prompt)

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if not json_out:
        sys.stdout.write(prompt)
    res = eng.generate(ids, max_new_tokens, sampling, on_text=None if json_out else stream)
    if json_out:
        d = res.to_dict()
        d["model"] = {"path": lm.source.path, "arch": lm.args.arch, "format": lm.source.format}
        emit_json(d)
    else:
        sys.stdout.write("\n")
        t = res.timings.to_dict()
        log(f"{t['new_tokens']} tokens, ttft {t['ttft_s'] * 1e3:.1f} ms, "
            f"decode {t['decode_tok_s'] or 0:.1f} tok/s, stop: {res.stop_reason}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
