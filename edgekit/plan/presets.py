"""Named weight-quantization presets shared by the planner, ``--quant`` and ``--help``.

A preset fixes the stored weight format of the linear layers: integer bits, group size, and the
per-group float metadata (an fp16 scale and an fp16 *float offset*, decoupleQ's ``W = s*q + z``).
``w8`` has one group per output row. The byte layout is :mod:`edgekit.quant.layout`'s (codes
then an fp16 scale and an fp16 zero per group); ``edgekit.quant.config.PRESETS`` uses the same
names. Embeddings and norms stay in
the float dtype unless the memory model is told otherwise.

``rel_ppl`` is the expected perplexity ratio to fp16, taken from Llama-2-7B WikiText-2 numbers
(papers.md section 3: fp16 5.47, W4 5.70, W3 6.22, W2 g128 8.79, W2 g64 8.41). Small models lose
more under quantization, so treat it as a lower bound on the loss; the planner uses it only to
keep presets that are expected to hurt quality out of the ranking unless asked.

Example::

    from edgekit.plan.presets import get_preset
    p = get_preset("w2g64")
    p.bits_per_weight(4096)   # 2.5  (2 bits + 32 bits of scale/offset per 64 weights)
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import UserError


@dataclass(frozen=True)
class QuantPreset:
    """One stored weight format. ``group_size=None``: per output channel (integer presets) or no
    quantization at all (float presets)."""

    name: str
    bits: int
    group_size: int | None
    scale_bytes: int  # per group (per row for per-channel)
    offset_bytes: int  # float offset per group
    rel_ppl: float
    rel_ppl_source: str
    description: str

    @property
    def is_float(self) -> bool:
        return self.bits >= 16

    def bits_per_weight(self, in_features: int) -> float:
        """Average stored bits per weight of an ``[out, in_features]`` matrix, metadata and
        padding included (:meth:`edgekit.quant.layout.Layout.bits_per_weight`)."""
        if self.is_float:
            return float(self.bits)
        from edgekit.quant.layout import Layout

        return Layout(self.bits, self.group_size).bits_per_weight(in_features)


_DQ = "decoupleQ (arXiv 2404.12759) Llama-2-7B WikiText-2 ppl vs fp16 5.47"

PRESETS: dict[str, QuantPreset] = {p.name: p for p in [
    QuantPreset("w2g64", 2, 64, 2, 2, 8.41 / 5.47, f"{_DQ}: W2 g64 8.41",
                "2-bit, group 64, fp16 scale + fp16 offset (2.5 bits/weight)"),
    QuantPreset("w2g128", 2, 128, 2, 2, 8.79 / 5.47, f"{_DQ}: W2 g128 8.79",
                "2-bit, group 128, fp16 scale + fp16 offset (2.25 bits/weight)"),
    QuantPreset("w3g64", 3, 64, 2, 2, 6.22 / 5.47, f"{_DQ}: W3 6.22 (per-channel; g64 is at least as good)",
                "3-bit, group 64, fp16 scale + fp16 offset (3.5 bits/weight)"),
    QuantPreset("w4g32", 4, 32, 2, 2, 1.02, "GPTQ/AWQ Llama-2-7B W4 g128 ~5.6 vs 5.47; g32 a little better",
                "4-bit, group 32, fp16 scale + fp16 offset (5 bits/weight)"),
    QuantPreset("w4g128", 4, 128, 2, 2, 1.03, "GPTQ/AWQ Llama-2-7B W4 g128 ~5.6 vs 5.47",
                "4-bit, group 128, fp16 scale + fp16 offset (4.25 bits/weight)"),
    QuantPreset("w8", 8, None, 2, 2, 1.002, "LLM.int8()/SmoothQuant: W8 per-channel within 0.01 ppl of fp16",
                "8-bit per output channel, fp16 scale + fp16 offset"),
    QuantPreset("fp16", 16, None, 0, 0, 1.0, "reference", "float16 weights"),
    QuantPreset("fp32", 32, None, 0, 0, 1.0, "reference", "float32 weights"),
]}


def get_preset(name: str) -> QuantPreset:
    """The preset called ``name``.

    Raises:
        UserError: unknown name, with the list of presets as the hint.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown quantization preset {name!r}",
                        f"use one of {', '.join(PRESETS)}") from None


def preset_for(bits: int, group_size: int | None) -> QuantPreset | None:
    """The preset with exactly these bits and group size, or None."""
    for p in PRESETS.values():
        if p.bits == bits and p.group_size == group_size:
            return p
    return None
