"""Versioned quantization configs and the named presets (same names as ``edgekit.plan.presets``).

Example::

    cfg = preset_config("w2g64", method="decoupleq")
    QuantConfig.from_dict(cfg.to_dict()) == cfg     # True; the dict goes into manifests
    W2Config(group_size=128, method="gptq")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import UserError
from edgekit.quant.layout import SUPPORTED_BITS
from edgekit.quant.solvers import METHODS

CONFIG_VERSION = 1


@dataclass
class QuantConfig:
    """How to quantize a model's linear layers.

    bits / group_size: the packed format of the transformer-block linears (group_size None =
    per output channel). method: rtn | gptq | decoupleq (the last two need calibration data).
    embedding_bits / head_bits: quantize the token embedding / LM head too (None = keep fp32).
    A tied head (stories260K, SmolLM2) stays tied in float unless head_bits is set; then it is
    untied and stored packed. embedding_group_size / head_group_size default to group_size.
    damp: Hessian damping as a fraction of mean(diag H). rounds: decoupleQ alternation rounds.
    block_steps / block_lr: decoupleQ block stage (Adam steps on scale/zero/norm gains per
    transformer block; 0 = off); block_target "float" matches the float model's activations,
    "quant" the float block applied to the quantized pipeline's inputs. calib_*: calibration windows; seed makes the run deterministic.
    skip: module names (e.g. ``layers.0.attention.wq``) kept in float.
    act_bits: None = the packed linears multiply float activations (exact dequantized weights);
    8 = dynamic int8 activations per weight group (symmetric, amax / 127, round half to even),
    the kernels' fast integer path (edgekit/kernels/cpu/wq_linear.h), like llama.cpp's Q8
    activations and XNNPACK's qd8. Calibration always runs with float activations.
    """

    bits: int = 4
    group_size: int | None = 32
    method: str = "rtn"
    embedding_bits: int | None = None
    embedding_group_size: int | None = None
    head_bits: int | None = None
    head_group_size: int | None = None
    damp: float = 0.01
    act_order: bool = True
    block_size: int = 128
    rounds: int = 4
    block_steps: int = 0
    block_lr: float = 3e-3
    block_target: str = "quant"
    grid: int = 40
    calib_samples: int = 64
    calib_seq_len: int = 256
    seed: int = 0
    skip: list[str] = field(default_factory=list)
    preset: str | None = None
    act_bits: int | None = None
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.group_size is not None and self.group_size <= 0:
            self.group_size = None  # -1 / 0 mean per channel
        for name in ("bits", "embedding_bits", "head_bits"):
            b = getattr(self, name)
            if b is not None and b not in SUPPORTED_BITS:
                raise UserError(f"{name}={b} is not supported", f"use one of {SUPPORTED_BITS}")
        if self.act_bits not in (None, 8):
            raise UserError(f"act_bits={self.act_bits} is not supported", "use 8 (int8 activations) or none")
        if self.method not in METHODS:
            raise UserError(f"unknown quantization method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.block_target not in ("float", "quant"):
            raise UserError(f"unknown block_target {self.block_target!r}", "use float or quant")
        if self.version != CONFIG_VERSION:
            raise UserError(f"quantization config version {self.version} is not supported",
                            f"this edgekit reads version {CONFIG_VERSION}; re-quantize the model")

    @property
    def needs_calibration(self) -> bool:
        return self.method in ("gptq", "decoupleq")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown quantization config keys {sorted(unknown)}",
                            "the checkpoint was written by a newer edgekit")
        return cls(**d)


# name -> (bits, group_size); names identical to edgekit.plan.presets.PRESETS
PRESETS: dict[str, tuple[int, int | None]] = {
    "w2g64": (2, 64), "w2g128": (2, 128), "w3g64": (3, 64),
    "w4g32": (4, 32), "w4g128": (4, 128), "w8": (8, None),
}


def preset_config(name: str, **overrides: Any) -> QuantConfig:
    """QuantConfig for a named preset; ``overrides`` set any other field (method, seed, ...).

    Raises UserError for an unknown preset name (the hint lists the presets).
    """
    if name not in PRESETS:
        raise UserError(f"unknown quantization preset {name!r}", f"use one of {', '.join(PRESETS)}")
    bits, gs = PRESETS[name]
    return QuantConfig(bits=bits, group_size=gs, preset=name, **overrides)


def W2Config(group_size: int | None = 64, **kw: Any) -> QuantConfig:  # noqa: N802 - torchao-style name
    """2-bit config (decoupleQ's target format)."""
    return QuantConfig(bits=2, group_size=group_size, **kw)


def W3Config(group_size: int | None = 64, **kw: Any) -> QuantConfig:  # noqa: N802
    return QuantConfig(bits=3, group_size=group_size, **kw)


def W4Config(group_size: int | None = 32, **kw: Any) -> QuantConfig:  # noqa: N802
    return QuantConfig(bits=4, group_size=group_size, **kw)


def W8Config(group_size: int | None = None, **kw: Any) -> QuantConfig:  # noqa: N802
    return QuantConfig(bits=8, group_size=group_size, **kw)
