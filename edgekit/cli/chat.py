"""``edgekit chat``: multi-turn generation under one memory budget, with speculative decoding."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, log

DRAFT_HELP = "none | early-exit:K | lookup[:N] (prompt lookup: no model) | self-quant:w4|w8 | a draft checkpoint or package path."


def parse_tree(tree: str | None):
    """``b,T`` -> (b, T)."""
    from edgekit.errors import UserError

    if not tree:
        return None
    try:
        b, t = (int(x) for x in tree.split(","))
    except ValueError:
        raise UserError(f"bad --tree {tree!r}", "use --tree BRANCH,NODES, e.g. --tree 4,16") from None
    return b, t


def open_session(target: Optional[str], *, draft: str, budget_mb: Optional[float], tree: Optional[str],
                 draft_k: Optional[int], sampling, backend: Optional[str], threads: Optional[int]):
    """A ChatSession over a checkpoint (eager target) or an exported package."""
    from pathlib import Path

    from edgekit.runtime.session import ChatSession
    from edgekit.runtime.spec import SpecConfig

    t = parse_tree(tree)
    spec = SpecConfig(tree=t) if t else (SpecConfig(k=draft_k) if draft_k else None)
    if target and (Path(target) / "manifest.json").exists():
        from edgekit.runtime.package import load_package

        return ChatSession(package=load_package(target), backend=backend, threads=threads, draft=draft,
                           budget_mb=budget_mb, spec=spec, sampling=sampling)
    from edgekit.models.load import load_model

    if threads:
        import torch

        torch.set_num_threads(threads)
    return ChatSession(lm=load_model(target), draft=draft, budget_mb=budget_mb, spec=spec, sampling=sampling)


def chat(
    target: Annotated[Optional[str], typer.Argument(help="Package directory or checkpoint (default: built-in model).")] = None,
    *,
    turn: Annotated[Optional[list[str]], typer.Option("--turn", help="A user turn (repeat); without it, read turns from stdin.")] = None,
    draft: Annotated[str, typer.Option("--draft", help=DRAFT_HELP)] = "none",
    budget_mb: Annotated[Optional[float], typer.Option("--budget-mb", help="One memory budget for the session, weights included.")] = None,
    tree: Annotated[Optional[str], typer.Option("--tree", help="Tree drafting BRANCH,NODES (eager target, or a package exported with --tree-verify).")] = None,
    draft_k: Annotated[Optional[int], typer.Option("--draft-k", min=1, help="Fixed chain length (default: chosen by SpecMemo).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1)] = 64,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    backend: Annotated[Optional[str], typer.Option("--backend", "-b", help="executorch or onnx for packages.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print every turn, tau and the memory breakdown as JSON.")] = False,
) -> None:
    """Chat over several turns: history is kept and its KV reused; SpecMemo sizes the KV cache
    per turn and picks the draft length / tree size under --budget-mb.

    Examples:
      edgekit chat --turn "Once upon a time" --turn " The next day" --draft early-exit:4 --budget-mb 4
      edgekit chat out/stories --draft out/stories-w4 --budget-mb 600 --json
      echo "Once upon a time" | edgekit chat --draft self-quant:w8
    """
    from edgekit.runtime.engine import SamplingConfig

    sampling = SamplingConfig(temperature, top_p, seed)
    s = open_session(target, draft=draft, budget_mb=budget_mb, tree=tree, draft_k=draft_k,
                     sampling=sampling, backend=backend, threads=threads)
    turns = turn if turn else (line.rstrip("\n") for line in sys.stdin)
    out = []
    for text in turns:
        if not json_out:
            sys.stdout.write(text)
            sys.stdout.flush()

        res = s.turn(text, max_new_tokens)
        rec = s.turns[-1]
        if json_out:
            out.append({"prompt": text, "text": res.text, "tokens": res.tokens, "spec": rec.spec, "tau": rec.tau,
                        "kv_rows": rec.kv_rows, "timings": res.timings.to_dict()})
        else:
            sys.stdout.write(res.text + "\n")
            sys.stdout.flush()
            log(f"[{rec.spec}] tau {rec.tau:.2f}, {rec.new_tokens} tokens, {rec.tok_s or 0:.1f} tok/s, "
                f"KV rows {rec.kv_rows}")
    rep = s.report()
    if json_out:
        emit_json({"turns": out, "memory": rep})
    else:
        terms = ", ".join(f"{k} {v / 2**20:.2f}" for k, v in rep["memory"].items())
        log(f"memory (MiB): {terms}; generation {rep['generation_bytes'] / 2**20:.2f} MiB")


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
