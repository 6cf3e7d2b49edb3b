"""Verify a package: file integrity, each program against the golden outputs, and optionally
against the eager model rebuilt from the source checkpoint.

Integrity problems (unknown schema, missing / truncated / corrupt file) raise ``PackageError``
naming the file: nothing in a damaged package is run. Numeric checks come back as rows.

Example::

    rep = verify_package("out/stories", source="../shared/models/stories260K")
    rep["ok"], [r for r in rep["rows"] if not r["ok"]]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from edgekit.export.package import check_files, read_manifest


def _row(check: str, target: str, ok: bool, detail: str, **extra) -> dict[str, Any]:
    return {"check": check, "target": target, "ok": bool(ok), "detail": detail, **extra}


def program_logits(backend, ids: list[int]) -> torch.Tensor:
    """Logits (T, V) for ``ids`` from an empty cache, fed in chunks of the backend's max_chunk."""
    from edgekit.runtime.engine import Engine

    eng = Engine(backend, None, stop_ids=[])
    parts = [eng.step(ids[i:i + backend.max_chunk]) for i in range(0, len(ids), backend.max_chunk)]
    return torch.cat(parts)


QUANT_TOP1_FLOOR = 0.6  # a quantized program vs its float source: per-position argmax agreement


def check_program(backend, gold: dict[str, Any], kind: str, eager_logits: torch.Tensor | None = None,
                  source_tol: float | None = None, quantized_vs_float: bool = False) -> list[dict[str, Any]]:
    """Compare one backend with the golden outputs (and the eager logits when given).

    ``kind``: the program's format, optionally followed by a label (``"onnx early-exit:2"``).
    ``quantized_vs_float``: the package is quantized and the source is the float checkpoint, so
    the source check is a top-1 agreement floor with the SQNR reported, not allclose.
    """
    from edgekit.runtime.engine import Engine

    ids = gold["prompt_ids"]
    tols = gold.get("tolerance", {})
    approx = kind.split()[0] in tols.get("approximate", [])  # builder.py: int8 activations in onnxruntime
    tol = tols.get("top5_abs", 1e-3) * (4 if approx else 1)
    logits = program_logits(backend, ids)
    rows = []
    am = logits.argmax(-1).tolist()
    if approx:
        agree = sum(a == b for a, b in zip(am, gold["argmax"])) / max(1, len(am))
        rows.append(_row("argmax", kind, agree >= QUANT_TOP1_FLOOR, f"per-position argmax agreement {agree:.0%} "
                         f"(approximate program, floor {QUANT_TOP1_FLOOR:.0%})", top1_agreement=agree))
    else:
        ok = am == gold["argmax"]
        detail = "per-position argmax equal" if ok else f"argmax {am} != golden {gold['argmax']}"
        margins, near = gold.get("argmax_margins"), tols.get("near_tie")
        if not ok and near is not None and margins and len(am) == len(margins):
            parted = [i for i, (a, b) in enumerate(zip(am, gold["argmax"])) if a != b]
            if all(margins[i] < near for i in parted):  # int8 activations (builder.py)
                ok = True
                detail += f", only at near-ties (eager top-1 margins {[round(margins[i], 3) for i in parted]} " \
                          f"< {near:.3g})"
        rows.append(_row("argmax", kind, ok, detail))
    got = logits[-1][gold["top5_ids"]]
    want = torch.tensor(gold["top5_values"])
    d = float((got - want).abs().max())
    rows.append(_row("top5", kind, d <= tol, f"max |diff| {d:.2e} (tol {tol:g})", max_abs_diff=d))
    greedy = Engine(backend, None, stop_ids=[]).generate(ids, max_new_tokens=len(gold["greedy_ids"])).tokens
    first = next((i for i, (a, b) in enumerate(zip(greedy, gold["greedy_ids"])) if a != b), None)
    if approx:
        n = len(gold["greedy_ids"])
        ok = (first is None and len(greedy) == n) or (first is not None and first >= n // 4)
        rows.append(_row("greedy", kind, ok, f"{n} greedy tokens equal" if first is None else
                         f"greedy tokens diverge at {first} (approximate program: first {n // 4} must match)"))
    else:
        ok = greedy == gold["greedy_ids"]
        detail = f"{len(greedy)} greedy tokens equal" if ok else f"greedy tokens diverge at {first}"
        margins, near = gold.get("greedy_margins"), tols.get("near_tie")
        if not ok and first is not None and near is not None and margins and first < len(margins) \
                and margins[first] < near:
            ok = True  # int8 activations: parted at a near-tie of the eager model (builder.py)
            detail += f", a near-tie (eager top-1 margin {margins[first]:.3g} < {near:.3g})"
        rows.append(_row("greedy", kind, ok, detail))
    if eager_logits is not None and quantized_vs_float:
        agree = float((logits.argmax(-1) == eager_logits.argmax(-1)).float().mean())
        err = float((logits - eager_logits).pow(2).sum())
        sqnr = 10 * torch.log10(eager_logits.pow(2).sum() / max(err, 1e-30)).item()
        rows.append(_row("vs-source", kind, agree >= QUANT_TOP1_FLOOR,
                         f"quantized vs float: top-1 agreement {agree:.0%} (floor {QUANT_TOP1_FLOOR:.0%}), "
                         f"SQNR {sqnr:.1f} dB", top1_agreement=agree, sqnr_db=sqnr))
    elif eager_logits is not None:
        d = float((logits - eager_logits).abs().max())
        stol = source_tol if source_tol is not None else gold.get("tolerance", {}).get("source_max_abs", 1e-3)
        rows.append(_row("vs-source", kind, d <= stol, f"max |logits diff| {d:.2e} (tol {stol:g})",
                         max_abs_diff=d))
    return rows


def check_tree(backend, gold: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Tree verification (``forward_tree`` + ``compact``) of a program against its own chain.

    A 6-node tree rooted at the prompt's last token holds the first three golden greedy tokens
    as one path and a side branch (another first token, the second greedy token under it). Each
    node's logits must equal the plain forward's logits for that node's own token sequence,
    and after compacting the greedy path the next plain step must equal the chain's. Comparing
    the program with itself keeps the check exact for quantized programs too (tolerance as in
    ``check_program``). Returns [] when the golden continuation is shorter than 4 tokens.
    """
    ids, g = gold["prompt_ids"], gold["greedy_ids"]
    if len(g) < 4:
        return []
    tols = gold.get("tolerance", {})
    tol = tols.get("top5_abs", 1e-3) * (4 if kind in tols.get("approximate", []) else 1)
    start, other = len(ids) - 1, (g[0] + 1) % backend.vocab_size
    tokens, parents, path = [ids[-1], g[0], other, g[1], g[1], g[2]], [-1, 0, 0, 1, 2, 3], [0, 1, 3, 5]
    side = program_logits(backend, ids + [other, g[1]])[start:]  # rows of ids[-1], other, g1
    chain = program_logits(backend, ids + g[:4])[start:]  # rows of ids[-1], g0, g1, g2, g3
    want = torch.stack([chain[0], chain[1], side[1], chain[2], side[2], chain[3]])
    d = float((backend.forward_tree(tokens, start, parents) - want).abs().max())
    backend.compact(start, path)
    dc = float((backend.forward([g[3]], start + len(path))[0] - chain[4]).abs().max())
    return [_row("tree", kind, d <= tol, f"tree nodes vs the chain: max |logits diff| {d:.2e} (tol {tol:g})",
                 max_abs_diff=d),
            _row("tree-compact", kind, dc <= tol, f"step after compacting the path vs the chain: max |diff| "
                 f"{dc:.2e} (tol {tol:g})", max_abs_diff=dc)]


def verify_package(pkg: str | Path, source: str | Path | None = None,
                   kinds: list[str] | None = None, threads: int | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Check files, then every program (or ``kinds``) against the manifest's golden outputs.

    Returns ``{"ok": bool, "package": str, "rows": [{check, target, ok, detail}, ...]}``.
    Raises ``PackageError`` (naming the file) for an unknown schema or a damaged file.
    """
    from edgekit.runtime.package import load_package

    pkg = Path(pkg)
    m = read_manifest(pkg)
    rows = [_row("file", r["file"], r["ok"], r["detail"]) for r in check_files(pkg, m)]
    p = load_package(pkg, check=True)  # raises on the first damaged file
    eager = None
    if source is not None:
        from edgekit.models.load import load_model
        from edgekit.runtime.engine import EagerBackend

        lm = load_model(source, max_seq_len=m["max_seq_len"])
        if lm.source.files and m["source"].get("sha256") and lm.source.sha256() != m["source"]["sha256"]:
            rows.append(_row("source-sha256", str(source), False,
                             "checkpoint differs from the one the package was exported from"))
        eager = EagerBackend(lm.model, max_chunk=m["max_chunk"])
        eager = program_logits(eager, m["golden"]["prompt_ids"])
        q_vs_f = bool(m.get("quantization")) and lm.quant is None
    for kind in kinds or p.kinds:
        if log:
            log(f"checking {kind} program ...")
        be = p.backend(kind, threads=threads)
        rows += check_program(be, m["golden"], kind, eager, quantized_vs_float=eager is not None and q_vs_f)
        if getattr(be, "supports_tree", False):  # exported with --tree-verify
            rows += check_tree(be, m["golden"], kind)
    for name, d in p.drafts.items():  # draft programs against their own eager golden outputs
        if "golden" not in d:
            rows.append(_row("draft-golden", name, False, "no golden outputs for this draft (exported by an "
                             "older edgekit): re-export the package to check it"))
            continue
        for kind in d.get("programs", {}):
            if kinds and kind not in kinds:
                continue
            if log:
                log(f"checking {name} draft {kind} program ...")
            rows += check_program(p.draft_backend(name, kind, threads=threads), d["golden"], f"{kind} {name}")
    return {"ok": all(r["ok"] for r in rows), "package": str(pkg), "rows": rows}
