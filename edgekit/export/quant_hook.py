"""Quantize on the way out: an ``export_package`` quantization hook for a preset and a method.

``edgekit export MODEL --quant w2g64 [--method rtn|gptq|decoupleq --calib FILE]`` builds one of
these; the builder calls it in its transform stage with the model and its tokenizer (needed to
cut calibration windows), and records the returned config dict as ``manifest["quantization"]``.
An already quantized checkpoint (``edgekit quantize`` output) is exported without a hook: the
loader restores its packed modules and its config.

Example::

    hook = calibrated_quant_hook("w2g64", method="decoupleq", calib="corpus.txt")
    export_package("../shared/models/stories260K", "out/s-w2", quant=hook)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgekit.errors import UserError


def calibrated_quant_hook(preset: str, method: str = "rtn", calib: str | Path | None = None, *,
                          head_bits: int | None = None, calib_samples: int = 64, calib_seq_len: int = 256,
                          seed: int = 0, act_bits: int | None = None, log: Callable[[str], None] | None = None
                          ) -> Callable[..., "dict[str, Any]"]:
    """A hook ``hook(model, tokenizer=None) -> config dict`` that runs ``quantize_`` on ``model``.

    Raises (at construction, before anything is loaded):
        UserError: unknown preset or method, a calibrated method without ``calib``, an
        unreadable or empty calibration file, or a tokenizer missing at call time.
    """
    from edgekit.quant import preset_config, quantize_
    from edgekit.quant.calib import calibration_tokens, read_calib_text

    cfg = preset_config(preset, method=method, seed=seed, calib_samples=calib_samples,
                        calib_seq_len=calib_seq_len, head_bits=head_bits, act_bits=act_bits)
    if cfg.needs_calibration and calib is None:
        raise UserError(f"method {method!r} needs calibration data", "pass --calib FILE (a text file)")
    text = read_calib_text(calib) if calib is not None else None

    def hook(model, tokenizer=None) -> dict[str, Any]:
        tokens = None
        if text is not None:
            if tokenizer is None:
                raise UserError("calibrated quantization needs the model's tokenizer", "pass it to the hook")
            seq = min(calib_seq_len, model.args.max_seq_len)
            tokens = calibration_tokens(tokenizer, text, calib_samples, seq, seed)
            if log:
                log(f"  calibration: {tokens.shape[0]} windows x {tokens.shape[1]} tokens from {calib}")
        quantize_(model, cfg, tokens, log=log)
        return cfg.to_dict()

    hook.wants_tokenizer = True  # type: ignore[attr-defined]
    return hook
