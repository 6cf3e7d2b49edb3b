"""``edgekit quantize``: weight-quantize a checkpoint into an edgekit quantized checkpoint."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, log, progress

MODEL_HELP = "Float checkpoint: llama2.c .bin or HF directory (default: built-in stories260K)."


def quantize(
    model: Annotated[Optional[str], typer.Argument(help=MODEL_HELP)] = None,
    *,
    preset: Annotated[str, typer.Option("--preset", "-q", help="w2g64, w2g128, w3g64, w4g32, w4g128 or w8.")] = "w4g32",
    method: Annotated[str, typer.Option("--method", "-m", help="rtn | gptq | decoupleq.")] = "rtn",
    calib: Annotated[Optional[str], typer.Option("--calib", help="Calibration text file (gptq/decoupleq).")] = None,
    calib_samples: Annotated[int, typer.Option("--calib-samples", min=1)] = 64,
    calib_seq_len: Annotated[int, typer.Option("--calib-seq-len", min=2)] = 256,
    rounds: Annotated[Optional[int], typer.Option("--rounds", min=0, help="decoupleQ alternation rounds.")] = None,
    block_steps: Annotated[Optional[int], typer.Option("--block-steps", min=0,
                                                       help="decoupleQ block-stage Adam steps per layer.")] = None,
    act_int8: Annotated[bool, typer.Option("--act-int8", help="Int8 activations per weight group at run time (act_bits=8: the kernels' fast integer path).")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[str, typer.Option("--out", "-o", help="Output checkpoint directory.")] = ...,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Quantize the linear layers' weights and write a checkpoint that generate/eval/export load.

    Examples:
      edgekit quantize --preset w4g32 --out out/stories-w4
      edgekit quantize ../shared/models/stories260K --preset w2g64 --method decoupleq \\
          --calib ../shared/corpora/tinystories_val.txt --out out/stories-w2 --json
    """
    from edgekit.quant.run import quantize_checkpoint

    overrides = {k: v for k, v in (("rounds", rounds), ("block_steps", block_steps),
                                   ("act_bits", 8 if act_int8 else None)) if v is not None}
    res = quantize_checkpoint(model, preset, out, method=method, calib=calib, calib_samples=calib_samples,
                              calib_seq_len=calib_seq_len, seed=seed, force=force, overrides=overrides,
                              progress=progress, log=log)
    if json_out:
        emit_json(res)
    else:
        s = res["sizes"]
        typer.echo(f"wrote {res['out']}: {preset} {method}, {s['packed_modules']} packed modules, "
                   f"{s['packed_bytes']:,} packed + {s['float_bytes']:,} float bytes, {res['seconds']:.1f} s")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
