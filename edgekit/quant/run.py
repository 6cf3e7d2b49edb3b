"""One call behind ``edgekit quantize``: load, calibrate, quantize, save.

Example::

    res = quantize_checkpoint("../shared/models/stories260K", "w2g64", "out/s-w2", method="decoupleq",
                              calib="../shared/corpora/tinystories_val.txt")
    res["out"], res["seconds"]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from edgekit.errors import UserError
from edgekit.quant.api import model_quant_summary, quantize_, quantized_module_names
from edgekit.quant.calib import calibration_tokens, read_calib_text
from edgekit.quant.checkpoint import save_quantized
from edgekit.quant.config import preset_config


def quantize_checkpoint(model: str | Path | None, preset: str, out: str | Path, *, method: str = "rtn",
                        calib: str | Path | None = None, calib_samples: int = 64, calib_seq_len: int = 256,
                        seed: int = 0, force: bool = False, overrides: dict[str, Any] | None = None,
                        progress: Callable[[str, int], Any] | None = None,
                        log: Callable[[str], None] | None = None) -> dict:
    """Quantize the checkpoint at ``model`` with ``preset``/``method`` and write it to ``out``.

    ``progress(description, total)`` may return a context manager yielding ``advance(n)``.
    Returns a summary dict (out, config, seconds, sizes). Raises UserError for bad inputs
    (unknown preset, missing calibration file, existing output without force).
    """
    import contextlib

    from edgekit.models.load import load_model

    cfg = preset_config(preset, method=method, seed=seed, calib_samples=calib_samples,
                        calib_seq_len=calib_seq_len, **(overrides or {}))
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"output {out} already exists", "pass --force to overwrite it or choose another --out")
    if cfg.needs_calibration and calib is None:
        raise UserError(f"method {method!r} needs calibration data", "pass --calib FILE (a text file)")
    text = read_calib_text(calib) if calib is not None else None
    lm = load_model(model)
    if lm.quant is not None:
        raise UserError(f"{lm.source.path} is already quantized", "quantize the float checkpoint instead")
    if log:
        log(f"loaded {lm.source.path}: {lm.args.arch}, {lm.args.n_layers} layers, dim {lm.args.dim}")
    t0 = time.perf_counter()
    tokens = None
    if text is not None:
        seq = min(calib_seq_len, lm.args.max_seq_len)
        tokens = calibration_tokens(lm.tokenizer, text, calib_samples, seq, seed)
        if log:
            log(f"calibration: {tokens.shape[0]} windows x {tokens.shape[1]} tokens from {calib} (seed {seed})")
    total = len(quantized_module_names(lm.model, cfg))
    ctx = progress(f"quantize {preset} {method}", total) if progress else contextlib.nullcontext(None)
    with ctx as advance:
        quantize_(lm.model, cfg, tokens, advance=advance, log=log)
    secs = time.perf_counter() - t0
    save_quantized(lm, cfg, out, force=force)
    return {"out": str(out), "model": lm.source.path, "preset": preset, "method": method,
            "config": cfg.to_dict(), "seconds": round(secs, 3),
            "calibration": None if tokens is None else {"file": str(calib), "samples": int(tokens.shape[0]),
                                                        "seq_len": int(tokens.shape[1]), "seed": seed},
            "sizes": model_quant_summary(lm.model)}
