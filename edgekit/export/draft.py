"""Early-exit draft programs inside a package: the target's first K layers + final norm + head.

``export_package(..., draft_exit=K)`` adds ``draft_ee{K}.pte``: the same ABI-1 calling
convention and constant methods as ``model.pte`` (``get_n_layers`` returns K) with its own
K-layer KV cache, so a runtime drafts with it as with any separate draft program (its cache is
re-synced by common prefix / position). The weights of those K layers, the embedding, the final
norm and the head are stored again in the draft file (a .pte cannot reference another's
constants), which the manifest's ``drafts`` entry says and counts (``weight_bytes``).

Example::

    d = early_exit_model(lm.model, 2)        # shares lm.model's modules, no copy
    d(tokens, input_pos) == lm.model(tokens, input_pos, n_layers=2)
    info = export_draft_programs(lm.model, tmp, k=2, max_chunk=32, formats=("executorch",))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch

from edgekit.errors import UserError
from edgekit.export.package import sha256_file

DRAFT_NOTE = ("early-exit draft: the target's first {k} layers + final norm + LM head with its own "
              "{k}-layer KV cache; its weights are duplicated in this file (a program cannot share "
              "another program's constants), so loading it costs weight_bytes more memory")


def draft_name(k: int) -> str:
    """Manifest key of the early-exit draft of depth ``k``."""
    return f"early-exit:{k}"


def early_exit_model(model: torch.nn.Module, k: int) -> torch.nn.Module:
    """A Transformer whose forward equals ``model(tokens, input_pos, n_layers=k)``.

    It shares the embedding, the first ``k`` blocks (their KV cache buffers too), the final norm
    and the head with ``model``; it holds nothing for layers >= k, so an export of it carries
    neither their weights nor their caches.
    """
    from edgekit.models.llama import Transformer

    n = model.args.n_layers
    if not 1 <= k < n:
        raise UserError(f"--draft-exit {k} outside [1, {n - 1}]",
                        f"use --draft-exit K with K smaller than the model's {n} layers")
    d = Transformer.__new__(Transformer)
    torch.nn.Module.__init__(d)
    d.args = dataclasses.replace(model.args, n_layers=k)
    d.tok_embeddings = model.tok_embeddings
    d.layers = torch.nn.ModuleList(list(model.layers)[:k])
    d.norm = model.norm
    d.output = model.output
    for name in ("rope_cos", "rope_sin", "slots"):
        d.register_buffer(name, getattr(model, name), persistent=False)
    return d


def export_draft_programs(model: torch.nn.Module, out_dir: Path, k: int, max_chunk: int,
                          formats: tuple[str, ...], log: Callable[[str], None] | None = None,
                          stage: Callable[[str], Any] | None = None, tree: bool = False) -> dict[str, Any]:
    """Write ``draft_ee{k}.pte`` (when ``executorch`` in ``formats``) and ``draft_ee{k}/model.onnx``
    (when ``onnx``) into ``out_dir``; returns the manifest's ``drafts[early-exit:k]`` entry."""
    from edgekit.export.builder import weight_bytes

    d = early_exit_model(model, k)
    entry: dict[str, Any] = {"kind": "early-exit", "exit_layer": k, "n_layers": k,
                             "weight_bytes": weight_bytes(d), "note": DRAFT_NOTE.format(k=k),
                             "programs": {}}
    if "executorch" in formats:
        from edgekit.export.executorch import export_executorch

        name = f"draft_ee{k}.pte"
        if tree:  # verify_tree/compact methods: the drafter grows token trees too
            from edgekit.export.tree import export_executorch_tree

            info = export_executorch_tree(d, out_dir / name, max_chunk, log=log)
        else:
            info = export_executorch(d, out_dir / name, max_chunk, log=log,
                                     stage=(lambda s: stage(f"{s}[draft ee{k}]")) if stage else None)
        info["sha256"] = sha256_file(out_dir / name)
        entry["programs"]["executorch"] = info
        entry.update(file=name, size=info["size"], sha256=info["sha256"])
    if "onnx" in formats:
        from edgekit.export.onnx import export_onnx

        sub = out_dir / f"draft_ee{k}"
        sub.mkdir(exist_ok=True)
        info = export_onnx(d, sub, log=log, stage=(lambda s: stage(f"{s}[draft ee{k}]")) if stage else None,
                           tree=tree)
        info = dict(info)
        info["file"] = f"draft_ee{k}/{info['file']}"
        if info.get("data"):
            info["data"] = f"draft_ee{k}/{info['data']}"
        entry["programs"]["onnx"] = info
        entry.setdefault("file", info["file"])
    return entry
