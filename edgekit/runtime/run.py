"""Generation from a package through any backend, including the optional native runner.

Example::

    pkg = load_package("out/stories")
    res = generate_from_package(pkg, "Once upon a time", backend="onnx", max_new_tokens=32)
    res["text"], res["timings"]["decode_tok_s"]
    res = generate_spec("out/stories", "Once upon a time", draft="early-exit:4", budget_mb=8)
    res["tau"], res["memory"]["memory"]
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from edgekit.errors import UserError
from edgekit.runtime.engine import SamplingConfig


def native_module():
    """``edgekit.runtime.native`` or a ``UserError`` saying it is not available."""
    try:
        return importlib.import_module("edgekit.runtime.native")
    except ModuleNotFoundError as e:
        if e.name and not e.name.startswith("edgekit.runtime.native"):
            raise
        raise UserError("the native runner is not available in this edgekit (edgekit.runtime.native missing)",
                        "drop --native, or install an edgekit build with the native runner") from None


def generate_from_package(pkg, prompt: str, backend: str | None = None, max_new_tokens: int = 64,
                          sampling: SamplingConfig | None = None, threads: int | None = None,
                          native: bool = False, on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generate after ``prompt`` and return ``GenerationResult.to_dict()`` plus ``backend``.

    ``native=True`` runs the .pte in ``edgekit.runtime.native.generate_native`` (greedy only;
    raises ``UserError`` if that module is missing or sampling is not greedy).
    """
    sampling = sampling or SamplingConfig()
    ids = pkg.tokenizer.encode(prompt)
    stop = pkg.manifest.get("generation", {}).get("stop_ids", pkg.tokenizer.eos_ids)
    if native:
        if backend not in (None, "executorch"):
            raise UserError("--native runs the ExecuTorch program", "drop --backend or use --backend executorch")
        if sampling.temperature != 0:
            raise UserError("the native runner decodes greedily only", "use --temperature 0 with --native")
        nat = native_module()
        fn = getattr(nat, "generate_native", None) or getattr(nat, "run_native", None)
        if fn is None:
            raise UserError("edgekit.runtime.native has no generate_native()", "drop --native")
        r = fn(pkg.program_path("executorch"), ids, max_new_tokens, stop, threads)
        toks = list(r["tokens"])
        full = pkg.tokenizer.decode(ids + toks)
        head = pkg.tokenizer.decode(ids)
        text = full[len(head):] if full.startswith(head) else pkg.tokenizer.decode(toks)
        ms = lambda k: (r.get(k) or 0) / 1e3  # noqa: E731
        n = len(toks)
        timings = {"prompt_tokens": len(ids), "new_tokens": n, "ttft_s": ms("ttft_ms"),
                   "prefill_s": ms("prefill_ms"), "decode_s": ms("decode_ms"),
                   "prefill_tok_s": r.get("prefill_tok_s"), "decode_tok_s": r.get("decode_tok_s")}
        return {"backend": "native", "prompt_ids": ids, "tokens": toks, "text": text,
                "stop_reason": r.get("stop_reason", "length"), "timings": timings, "native": r}
    eng = pkg.engine(backend, threads=threads)
    res = eng.generate(ids, max_new_tokens, sampling, on_text=on_text)
    d = res.to_dict()
    d["backend"] = eng.backend.name
    return d


def native_draft_path(pkg, draft: str):
    """The .pte the native runner drafts with: the package's ``early-exit:K`` program or a draft
    package's ``model.pte``. Raises ``UserError`` for drafts the runner cannot run."""
    from pathlib import Path

    from edgekit.runtime.session import parse_draft

    kind, k = parse_draft(draft, pkg.args.n_layers)
    if kind == "early-exit":
        return pkg.draft_path(f"early-exit:{k}")
    if kind == "model" and (Path(draft) / "manifest.json").exists():
        from edgekit.runtime.package import load_package

        return load_package(draft).program_path("executorch")
    raise UserError(f"the native runner cannot draft with {draft!r}",
                    "use --draft early-exit:K (exported with --draft-exit K) or a draft package directory")


def generate_spec(package, prompt: str, draft: str, budget_mb: float | None = None,
                  draft_k: int | None = None, tree: str | None = None, backend: str | None = None,
                  max_new_tokens: int = 64, sampling: SamplingConfig | None = None,
                  threads: int | None = None, native: bool = False) -> dict[str, Any]:
    """One turn of (speculative) generation from a package under an optional memory budget,
    through ``edgekit.cli.chat.open_session`` + ``ChatSession``.

    ``draft``: ``none`` | ``early-exit:K`` (the package's draft program) | a draft package path.
    ``native=True``: the session checks the budget and reports memory, the tokens come from the
    native runner (greedy chains only; ``draft_k`` default 4).
    Returns ``GenerationResult.to_dict()`` plus ``backend``, ``spec``, ``tau``, ``steps`` and
    ``memory`` (``ChatSession.report()``: budget, KV rows, bytes per term, generation bytes).
    Raises ``BudgetError`` (exit 2 in the CLI, naming the minimum budget) before generating.
    """
    from edgekit.cli.chat import open_session

    sampling = sampling or SamplingConfig()
    if native:
        if tree:
            raise UserError("the native runner verifies chains only", "drop --tree with --native")
        if sampling.temperature != 0:
            raise UserError("the native runner decodes greedily only", "use --temperature 0 with --native")
        if backend not in (None, "executorch"):
            raise UserError("--native runs the ExecuTorch program", "drop --backend or use --backend executorch")
    s = open_session(str(package), draft=draft, budget_mb=budget_mb, tree=tree, draft_k=draft_k,
                     sampling=sampling, backend=backend, threads=threads)
    if not native:
        res = s.turn(prompt, max_new_tokens)
        rec = s.turns[-1]
        d = res.to_dict()
        d.update(backend=s.engine.backend.name, spec=rec.spec, draft=draft, tau=rec.tau,
                 steps=getattr(res, "steps", 0), memory=s.report())
        return d
    pkg = s.package
    k = draft_k or 4
    ids = pkg.tokenizer.encode(prompt)
    stop = pkg.manifest.get("generation", {}).get("stop_ids", pkg.tokenizer.eos_ids)
    nat = native_module()
    dp = None if s.drafter is None else native_draft_path(pkg, draft)
    r = nat.generate_native(pkg.program_path("executorch"), ids, max_new_tokens, stop, threads,
                            draft_pte=dp, draft_k=k)
    toks = list(r["tokens"])
    full, head = pkg.tokenizer.decode(ids + toks), pkg.tokenizer.decode(ids)
    text = full[len(head):] if full.startswith(head) else pkg.tokenizer.decode(toks)
    ms = lambda key: (r.get(key) or 0) / 1e3  # noqa: E731
    timings = {"prompt_tokens": len(ids), "new_tokens": len(toks), "ttft_s": ms("ttft_ms"),
               "prefill_s": ms("prefill_ms"), "decode_s": ms("decode_ms"),
               "prefill_tok_s": r.get("prefill_tok_s"), "decode_tok_s": r.get("decode_tok_s")}
    from edgekit.runtime.spec import SpecConfig

    s.current_spec = SpecConfig(k=k) if dp else None
    return {"backend": "native", "prompt_ids": ids, "tokens": toks, "text": text,
            "stop_reason": r.get("stop_reason", "length"), "timings": timings,
            "spec": f"chain k={k}" if dp else "none", "draft": draft, "tau": r.get("tau", 1.0) if dp else 1.0,
            "steps": r.get("steps", 0), "memory": s.report(), "native": r}
