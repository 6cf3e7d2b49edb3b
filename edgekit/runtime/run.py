"""Generation from a package through any backend, including the optional native runner.

Example::

    pkg = load_package("out/stories")
    res = generate_from_package(pkg, "Once upon a time", backend="onnx", max_new_tokens=32)
    res["text"], res["timings"]["decode_tok_s"]
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
