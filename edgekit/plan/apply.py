"""Turn a ``plan.json`` (and explicit overrides) into ``edgekit export`` settings.

``edgekit export MODEL --plan plan.json`` takes the KV cache length (``max_seq_len``) and the
weight preset from the plan; ``--max-seq-len`` / ``--quant`` given on the command line win over
the plan (house style: CLI > config file > defaults), and every value taken from the plan is
logged. Integer presets are applied at export time with round-to-nearest (no calibration data
is involved); for GPTQ/decoupleQ, quantize first with ``edgekit quantize`` and export that
checkpoint without ``--quant``.

Example::

    s = export_settings("plan.json", log=print)
    export_package(model, out, max_seq_len=s.max_seq_len, quant=s.quant)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from edgekit.errors import UserError
from edgekit.plan.presets import get_preset


@dataclass
class ExportSettings:
    """What ``export_package`` needs: ``max_seq_len`` (None = the checkpoint's), the
    quantization hook (None = float), and ``taken``: the settings that came from the plan."""

    max_seq_len: int | None = None
    preset: str | None = None
    quant: Callable[[Any], "dict[str, Any] | None"] | None = None
    taken: dict[str, Any] = field(default_factory=dict)


def quant_hook(preset: str, head_bits: int | None = None) -> Callable[[Any], "dict[str, Any] | None"] | None:
    """An ``export_package`` quantization hook for a named preset (RTN), or None for ``fp32``.

    ``head_bits``: also quantize the LM head (untying a tied head), as a plan with
    ``lm_head: quantized`` asks.

    Raises:
        UserError: an unknown preset, or ``fp16`` (exported programs are fp32 or integer).
    """
    p = get_preset(preset)
    if p.is_float:
        if p.bits == 32:
            return None
        raise UserError(f"preset {preset}: edgekit export writes fp32 or integer-quantized programs, not fp16",
                        "pass --quant fp32 (or an integer preset such as w4g32) to override the plan")
    from edgekit.quant import preset_config, quantize_

    cfg = preset_config(preset, method="rtn", head_bits=head_bits)

    def hook(model) -> dict[str, Any]:
        quantize_(model, cfg)
        return cfg.to_dict()

    return hook


def export_settings(plan: str | os.PathLike | None = None, *, max_seq_len: int | None = None,
                    quant: str | None = None, log: Callable[[str], None] | None = None) -> ExportSettings:
    """Resolve export settings: explicit ``max_seq_len`` / ``quant`` first, then the plan file.

    Args:
        plan: a ``plan.json`` written by ``edgekit plan --out`` (validated by ``load_plan``).
        max_seq_len / quant: values given on the command line (None = not given).
        log: receives one line per value taken from (or overriding) the plan.

    Raises:
        UserError: an invalid plan file or preset.
    """
    say = log or (lambda s: None)
    s = ExportSettings(max_seq_len=max_seq_len, preset=quant)
    head_bits = None
    if plan is not None:
        from edgekit.plan.planner import load_plan

        pf = load_plan(plan)
        say(f"plan {plan}: {pf.model.get('name', 'model')} on {pf.device} ({pf.backend}), preset {pf.preset}, "
            f"context {pf.context}")
        if max_seq_len is None:
            s.max_seq_len = pf.max_seq_len
            s.taken["max_seq_len"] = pf.max_seq_len
            say(f"  max_seq_len {pf.max_seq_len} from the plan")
        elif max_seq_len != pf.max_seq_len:
            say(f"  --max-seq-len {max_seq_len} overrides the plan's {pf.max_seq_len}")
        if quant is None:
            s.preset = pf.preset
            head_bits = pf.head_bits if pf.lm_head == "quantized" else None
            s.taken["preset"] = pf.preset
            if head_bits:
                s.taken["head_bits"] = head_bits
            say(f"  quantization {pf.preset}{f' (LM head {head_bits}-bit)' if head_bits else ''} from the plan, "
                "round-to-nearest")
        elif quant != pf.preset:
            say(f"  --quant {quant} overrides the plan's {pf.preset}")
        if pf.draft.kind != "none":
            say(f"  the plan's draft ({pf.draft.label}) is a runtime setting; the package holds the target only")
    if s.preset is not None:
        s.quant = quant_hook(s.preset, head_bits)
    return s
