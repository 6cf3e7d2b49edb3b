"""``edgekit export``: build an ExecuTorch and/or ONNX package from a checkpoint."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, log, out, progress

MODEL_HELP = "Checkpoint: llama2.c .bin, HF directory or edgekit checkpoint (default: built-in stories260K)."


def export(
    model: Annotated[Optional[str], typer.Argument(help=MODEL_HELP)] = None,
    *,
    out_dir: Annotated[str, typer.Option("--out", "-o", help="Package directory to create.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="executorch, onnx or both.")] = "executorch",
    max_seq_len: Annotated[Optional[int], typer.Option("--max-seq-len", help="KV cache length (default: the checkpoint's).")] = None,
    max_chunk: Annotated[int, typer.Option("--max-chunk", help="Most tokens per ExecuTorch forward call (dynamic T).", min=1)] = 32,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out.")] = False,
    plan: Annotated[Optional[str], typer.Option("--plan", help="plan.json from `edgekit plan --out`: its max_seq_len and preset (explicit flags win).")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", "-q", help="Weight preset applied with round-to-nearest: w2g64, w2g128, w3g64, w4g32, w4g128, w8 or fp32.")] = None,
    method: Annotated[str, typer.Option("--method", help="Quantization method with --quant: rtn, gptq or decoupleq (the last two need --calib).")] = "rtn",
    calib: Annotated[Optional[str], typer.Option("--calib", help="Calibration text file for --method gptq/decoupleq.")] = None,
    act_int8: Annotated[bool, typer.Option("--act-int8", help="With --quant: int8 activations per weight group in the packed linears (the kernels' fast integer path; QuantConfig.act_bits=8).")] = False,
    tree_verify: Annotated[bool, typer.Option("--tree-verify", help="Programs can verify token trees (tree speculative decoding): ExecuTorch gets verify_tree/compact methods sharing the KV cache with forward, ONNX an attention_mask input.")] = False,
    draft_exit: Annotated[Optional[int], typer.Option("--draft-exit", min=1, help="Also write an early-exit draft program of the first K layers (draft_ee{K}.pte).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Export a model to a verified package (staged: load, transform, export, lower, serialize, verify).

    Examples:
      edgekit export --out out/stories --format both --max-seq-len 256
      edgekit export ./SmolLM2-135M --out out/smollm --format executorch --max-chunk 16 --force
      edgekit plan ../shared/models/stories260K --device raspberry-pi-5-8gb --out plan.json
      edgekit export ../shared/models/stories260K --plan plan.json --out out/stories-pi5
      edgekit export --out out/stories-ee --draft-exit 2
      edgekit export ../shared/models/stories260K --quant w2g64 --method decoupleq --calib corpus.txt --out out/s-w2
      edgekit quantize --preset w2g64 --out ckpt-w2 && edgekit export ckpt-w2 --out out/s-w2
      edgekit export ../shared/models/stories260K --quant w2g64 --act-int8 --out out/s-w2a8
    """
    from edgekit.export.builder import export_package, n_stages, parse_formats
    from edgekit.plan.apply import export_settings

    fmts = parse_formats(fmt)
    s = export_settings(plan, max_seq_len=max_seq_len, quant=quant, log=log)
    if (method != "rtn" or calib is not None or act_int8) and s.preset not in (None, "fp32"):
        from edgekit.export.quant_hook import calibrated_quant_hook

        s.quant = calibrated_quant_hook(s.preset, method, calib, head_bits=s.taken.get("head_bits"),
                                        act_bits=8 if act_int8 else None, log=log)
    elif method != "rtn" or calib is not None or act_int8:
        from edgekit.errors import UserError

        raise UserError("--method/--calib/--act-int8 need a quantization preset", "add --quant w2g64 (or another preset)")
    with progress("export", n_stages(fmts)) as advance:
        m = export_package(model, out_dir, formats=fmts, max_seq_len=s.max_seq_len, max_chunk=max_chunk,
                           force=force, quant=s.quant, log=log, advance=advance, draft_exit=draft_exit,
                           tree_verify=tree_verify)
    if json_out:
        emit_json(m)
        return
    for kind, p in m["programs"].items():
        extra = ""
        if kind == "executorch":
            extra = f", xnnpack {p['delegated_nodes']}/{p['total_nodes']} ops in {p['delegate_calls']} delegates"
        out.print(f"{kind}: {out_dir}/{p['file']} ({p['size'] / 1e6:.1f} MB{extra})", markup=False)
    for name, d in m.get("drafts", {}).items():
        out.print(f"draft {name}: {out_dir}/{d['file']} ({d['size'] / 1e6:.1f} MB, weights duplicated)", markup=False)
    out.print(f"package {out_dir}: max_seq_len {m['max_seq_len']}, max_chunk {m['max_chunk']}, "
              f"{len(m['files'])} files; build {sum(m['build']['stage_seconds'].values()):.1f} s", markup=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
