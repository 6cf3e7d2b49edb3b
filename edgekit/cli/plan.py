"""``edgekit plan``: the fastest configuration of a model that fits a device's memory budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, log, out
from edgekit.cli.devices import print_table

MODEL_HELP = ("A shape name (smollm2-135m, qwen2.5-0.5b, llama-3.2-1b, llama-2-7b, encdec-330m, "
              "blockffn-small) or a checkpoint path.")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


def _print(res, top: int) -> None:
    d = res.to_dict(top=top)
    c = res.chosen
    budgets = ", ".join(f"{b}: {_mib(v)} MiB" for b, v in res.budget_bytes.items())
    _say(f"model    {res.shape.name} ({res.shape.n_params() / 1e6:,.1f}M params), context {res.context}, "
              f"prompt {res.prompt_tokens}")
    _say(f"device   {res.device.name} [{res.device.identity.device_class}], budget {budgets}")
    _say(f"chosen   {c.label}: {c.decode_tok_s:.1f} tok/s decode, TTFT {c.ttft_s * 1e3:.0f} ms, "
              f"peak {_mib(c.memory.total)} MiB (weights {_mib(c.memory.weights)} + generation "
              f"{_mib(c.memory.generation)}), fits up to context {c.max_context}")
    if c.draft.kind != "none":
        s = c.speed
        _say(f"         speculation: alpha {s.alpha:.2f}, k {c.draft.length}, {s.expected_tokens:.2f} tokens/step, "
                  f"draft cost c {s.draft_cost:.2f}, speedup {s.speedup:.2f}x (standard formula "
                  f"{s.speedup_standard:.2f}x)")
    _say(f"         selection: {res.selection}")
    _say("")
    from rich.table import Table

    t = Table(title=f"top {min(top, len(res.ranked))} of {len(res.ranked)} fitting "
                    f"({len(res.rejected)} rejected)", title_justify="left")
    for col in ("#", "configuration", "tok/s", "TTFT ms", "peak MiB", "weights", "generation", "max ctx", "bound"):
        t.add_column(col, justify="left" if col == "configuration" else "right")
    for i, x in enumerate(res.ranked[:top], 1):
        t.add_row("*" if x is c else str(i), x.label, f"{x.decode_tok_s:.1f}", f"{x.ttft_s * 1e3:.0f}", _mib(x.memory.total),
                  _mib(x.memory.weights), _mib(x.memory.generation),
                  "-" if x.max_context is None else str(x.max_context), x.speed.step.bound)
    print_table(t)
    t2 = Table(title=f"memory breakdown of {c.label}", title_justify="left")
    t2.add_column("term")
    t2.add_column("MiB", justify="right")
    t2.add_column("note")
    for k, v in c.memory.terms.items():
        t2.add_row(k, f"{v / 2**20:,.1f}", c.memory.notes.get(k, "")[:90])
    t2.add_row("total", f"{c.memory.total / 2**20:,.1f}", "")
    t2.add_row("generation (total - weights)", f"{c.memory.generation / 2**20:,.1f}", "")
    print_table(t2)
    # Why the bigger/slower configurations were dropped: one line per distinct reason.
    seen: dict[str, str] = {}
    for r in d["rejected"]:
        for why in r["reasons"]:
            key = why.split(" (")[0] if not why.startswith("needs") else f"budget:{r['preset']}/{r['backend']}"
            seen.setdefault(key, f"{r['label']}: {why}")
    if seen:
        _say("rejected (one example per reason):")
        for line in list(seen.values())[:14]:
            _say(f"  - {line}")


def plan(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    *,
    device: Annotated[str, typer.Option("--device", "-d", help="Catalog name (`edgekit devices`) or profile JSON.")],
    budget_mb: Annotated[Optional[float], typer.Option("--budget-mb", help="Memory budget in MiB (default: "
                                                       "the device's app-usable memory).")] = None,
    context: Annotated[Optional[int], typer.Option("--context", help="KV cache length: prompt + new tokens "
                                                   "(default: min(max_seq_len, 2048)).")] = None,
    draft: Annotated[str, typer.Option("--draft", help="none | auto | MODEL | early-exit:K | self-quant:BITS | "
                                       "medusa:K")] = "auto",
    draft_length: Annotated[Optional[int], typer.Option("--draft-length", help="Fix the draft length k "
                                                        "(default: search 1-8).")] = None,
    objective: Annotated[str, typer.Option("--objective", help="decode (tokens/s) or ttft.")] = "decode",
    backend: Annotated[Optional[str], typer.Option("--backend", help="Only this backend of the device.")] = None,
    preset: Annotated[Optional[list[str]], typer.Option("--preset", help="Only these weight presets "
                                                        "(repeatable).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads (default: all).")] = None,
    prompt_tokens: Annotated[Optional[int], typer.Option("--prompt-tokens", min=1, help="Prompt length for "
                                                         "TTFT (default: min(256, context/2)).")] = None,
    max_ppl_increase: Annotated[float, typer.Option("--max-ppl-increase", help="Drop presets expected to raise "
                                                    "perplexity by more than this fraction.")] = 0.10,
    acceptance: Annotated[Optional[float], typer.Option("--acceptance", help="Draft acceptance rate per token "
                                                        "(default: per-draft priors).")] = None,
    kv_dtype: Annotated[Optional[str], typer.Option("--kv-dtype", help="KV cache dtype: fp32, fp16, bf16 or "
                                                    "int8 (default: the backend's).")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="python or native (process overhead).")] = "python",
    top: Annotated[int, typer.Option("--top", min=1, help="How many configurations to list.")] = 5,
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the chosen configuration "
                                                     "(plan.json, read by `edgekit export --plan`).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw the memory breakdown and roofline "
                                                 "to this PNG.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full plan report as JSON.")] = False,
) -> None:
    """Enumerate bit widths x group sizes x drafts x draft lengths, drop what does not fit the
    memory budget, and rank the rest by predicted speed.

    Examples:
      edgekit plan llama-3.2-1b --device galaxy-s24 --budget-mb 3072
      edgekit plan smollm2-135m --device raspberry-pi-5-8gb --context 1024 --draft none --json
      edgekit plan ../shared/models/stories260K --device my-host.json --out plan.json --plot plan.png
    """
    from edgekit.errors import UserError
    from edgekit.plan import plan as make_plan

    if objective not in ("decode", "ttft"):
        raise UserError(f"unknown --objective {objective!r}", "use decode or ttft")
    if runtime not in ("python", "native"):
        raise UserError(f"unknown --runtime {runtime!r}", "use python or native")
    res = make_plan(model, device, budget_mb=budget_mb, context=context, draft=draft, draft_length=draft_length,
                    objective=objective, backend=backend, presets=preset, threads=threads,  # type: ignore[arg-type]
                    prompt_tokens=prompt_tokens, max_ppl_increase=max_ppl_increase, acceptance=acceptance,
                    kv_dtype=kv_dtype, runtime=runtime)  # type: ignore[arg-type]
    log(f"planned {len(res.ranked) + len(res.rejected)} configurations: {len(res.ranked)} fit, "
        f"{len(res.rejected)} rejected")
    if out_file is not None:
        res.write_plan(out_file)
        log(f"wrote {out_file} ({res.chosen.label})")
    if plot is not None:
        from edgekit.plan.plot import plot_plan

        plot_plan(res, plot, top=top)
        log(f"wrote {plot}")
    if json_out:
        emit_json(res.to_dict(top=top))
    else:
        _print(res, top)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
