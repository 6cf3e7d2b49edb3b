"""Weight quantization: the packed layout, configs/presets, RTN / GPTQ / decoupleQ, checkpoints.

Example::

    from edgekit.quant import quantize_, preset_config
    quantize_(lm.model, preset_config("w4g32"))          # RTN, no calibration needed
"""

from edgekit.quant.api import quantize_, quantize_linears_
from edgekit.quant.calib import calibration_tokens, read_calib_text
from edgekit.quant.config import PRESETS, QuantConfig, W2Config, W3Config, W4Config, W8Config, preset_config
from edgekit.quant.layout import Layout, dequantize, pack_torch, unpack_torch
from edgekit.quant.modules import (PACKED_LINEAR, PackedEmbedding, PackedLinearW2, PackedLinearW3,
                                   PackedLinearW4, PackedLinearW8)

__all__ = ["quantize_", "quantize_linears_", "calibration_tokens", "read_calib_text", "PRESETS", "QuantConfig", "W2Config",
           "W3Config", "W4Config", "W8Config", "preset_config", "Layout", "dequantize", "pack_torch",
           "unpack_torch", "PACKED_LINEAR", "PackedEmbedding", "PackedLinearW2", "PackedLinearW3",
           "PackedLinearW4", "PackedLinearW8"]
