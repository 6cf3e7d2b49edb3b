"""THE packed weight layout: one definition shared by the Python packer, the C++ kernel, the
ONNX mapping and the CUDA kernel. Everything else is tested against the scalar reference here.

Weights and groups
------------------
A linear weight ``W`` is ``[N out, K in]`` (torch's ``nn.Linear.weight`` layout). Each row is
split along ``k`` into ``G = ceil(K / g)`` groups of ``g`` consecutive columns (``g = group_size``;
``group_size=None`` means per channel: one group spanning the row, ``g = K``, ``G = 1``; a
``group_size >= K`` is the same as per channel, i.e. the effective group is ``g = min(group_size, K)``)::

    W_hat[n, k] = scale[n, k // g] * u[n, k] + zero[n, k // g]

``u`` are unsigned integer codes in ``[0, 2**b - 1]``. ``scale`` and ``zero`` are float16
``[N, G]``; ``zero`` is a *float offset* (not an integer zero point). This is decoupleQ's
``s * q + z`` with the signed code folded in exactly: ``u = q + 2**(b-1)`` and
``zero = z - 2**(b-1) * s``. Dequantization computes in float32 from the fp16 values.

Padding: when ``K`` is not a multiple of ``g`` the row is padded up to ``K_pad = G * g`` with
zero codes (the last group has ``K - (G-1)*g`` real columns; padded columns dequantize to
``zero`` and are dropped, never multiplied). Per channel ``K_pad = K``.

Codes in bytes
--------------
Each row is an independent little-endian **bit stream** of ``K_pad`` codes of ``b`` bits: code
``k`` occupies stream bits ``[b*k, b*k + b)``, and stream bit ``i`` is bit ``i % 8`` (LSB = 0) of
byte ``i // 8`` of the row. The row is padded with zero bits to ``row_bytes = ceil(K_pad*b/8)``
whole bytes, and rows are stored one after the other: ``qweight`` is uint8 ``[N, row_bytes]``.
Concretely::

    b=8  byte k              = u[k]
    b=4  byte k//2           = u[2j] | u[2j+1] << 4                (low nibble first)
    b=2  byte k//4           = u[4j] | u[4j+1] << 2 | u[4j+2] << 4 | u[4j+3] << 6
    b=3  bytes 3j..3j+2      = the 24-bit little-endian word  sum_i u[8j+i] << 3i,  i = 0..7
                               (8 codes in 3 bytes; code 2 straddles bytes 0/1, code 5 bytes 1/2)

    2-bit byte:   bit 7 6 | 5 4 | 3 2 | 1 0
                     u[k+3]|u[k+2]|u[k+1]|u[k]      (k = 4 * byte index)

    3-bit word (byte0 | byte1 << 8 | byte2 << 16), k = 8 * word index:
                  bit 23..21 20..18 17..15 14..12 11..9  8..6  5..3  2..0
                     u[k+7] u[k+6] u[k+5] u[k+4] u[k+3] u[k+2] u[k+1] u[k]

Sizes: ``bytes_for(N, K) = N * (row_bytes + 4 * G)`` (codes + fp16 scale + fp16 zero);
``bits_per_weight(K) = 8 * (row_bytes + 4 * G) / K``: 2.5 at b=2 g=64, 2.25 at g=128, 3.5 at
b=3 g=64, 5.0 at b=4 g=32, ~8 per channel at b=8 (K=4096: 8.0078).

Example::

    lay = Layout(2, 64)
    packed = pack_torch(codes, lay)                     # codes uint8 (N, K) -> (N, row_bytes)
    W = dequantize(packed, scale, zero, lay, K)         # (N, K) float32
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SUPPORTED_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class Layout:
    """A packed format: ``bits`` per code and ``group_size`` (None = per output channel)."""

    bits: int
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"unsupported bits {self.bits}; supported {SUPPORTED_BITS}")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"group_size must be positive or None, got {self.group_size}")

    @property
    def maxq(self) -> int:
        """Largest code, ``2**bits - 1``."""
        return (1 << self.bits) - 1

    def group(self, K: int) -> int:
        """Columns per group for a row of ``K`` weights."""
        if self.group_size is None or self.group_size <= 0 or self.group_size >= K:
            return K  # a group never exceeds the row
        return self.group_size

    def n_groups(self, K: int) -> int:
        return -(-K // self.group(K))

    def padded_k(self, K: int) -> int:
        """``K`` rounded up to whole groups (the number of codes stored per row)."""
        return self.n_groups(K) * self.group(K)

    def row_bytes(self, K: int) -> int:
        return -(-self.padded_k(K) * self.bits // 8)

    def bytes_for(self, N: int, K: int) -> int:
        """Total stored bytes of an ``[N, K]`` weight: codes + fp16 scale + fp16 zero."""
        return N * (self.row_bytes(K) + 4 * self.n_groups(K))

    def bits_per_weight(self, K: int) -> float:
        """Stored bits per weight, metadata and padding included."""
        return 8.0 * (self.row_bytes(K) + 4 * self.n_groups(K)) / K

    def to_dict(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size}


# --- scalar reference (numpy, loops) -----------------------------------------------------------

def pack_reference(codes: np.ndarray, layout: Layout) -> np.ndarray:
    """Scalar reference packer: ``codes`` uint (N, K) in [0, maxq] -> uint8 (N, row_bytes).

    Written bit by bit straight from the spec; slow, for tests only.
    """
    codes = np.asarray(codes)
    N, K = codes.shape
    b = layout.bits
    out = np.zeros((N, layout.row_bytes(K)), dtype=np.uint8)
    for n in range(N):
        for k in range(K):
            u = int(codes[n, k])
            if not 0 <= u <= layout.maxq:
                raise ValueError(f"code {u} out of range for {b} bits")
            for t in range(b):
                if (u >> t) & 1:
                    i = b * k + t
                    out[n, i // 8] |= np.uint8(1 << (i % 8))
    return out


def unpack_reference(packed: np.ndarray, K: int, layout: Layout) -> np.ndarray:
    """Scalar reference unpacker: uint8 (N, row_bytes) -> uint8 codes (N, K)."""
    packed = np.asarray(packed, dtype=np.uint8)
    N = packed.shape[0]
    b = layout.bits
    out = np.zeros((N, K), dtype=np.uint8)
    for n in range(N):
        for k in range(K):
            u = 0
            for t in range(b):
                i = b * k + t
                u |= ((int(packed[n, i // 8]) >> (i % 8)) & 1) << t
            out[n, k] = u
    return out


def dequantize_reference(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, layout: Layout,
                         K: int) -> np.ndarray:
    """Scalar reference dequantization to float32 (N, K), computing in float32 from fp16."""
    u = unpack_reference(packed, K, layout).astype(np.float32)
    g = layout.group(K)
    s = np.asarray(scale, dtype=np.float16).astype(np.float32)
    z = np.asarray(zero, dtype=np.float16).astype(np.float32)
    out = np.empty_like(u)
    for k in range(K):
        out[:, k] = s[:, k // g] * u[:, k] + z[:, k // g]
    return out


# --- fast vectorized torch versions (traceable by torch.export) --------------------------------

_PER_WORD = {2: 4, 4: 2, 8: 1, 3: 8}  # codes per packing unit (a byte, or 3 bytes for b=3)
_WORD_BYTES = {2: 1, 4: 1, 8: 1, 3: 3}


def pack_torch(codes: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Pack integer ``codes`` (N, K) in [0, maxq] into uint8 (N, row_bytes), K padded per spec."""
    b = layout.bits
    N, K = codes.shape
    rb = layout.row_bytes(K)
    per = _PER_WORD[b]
    kp = -(-max(layout.padded_k(K), 1) // per) * per
    c = torch.zeros((N, kp), dtype=torch.int32)
    c[:, :K] = codes.to(torch.int32)
    if int(c.min()) < 0 or int(c.max()) > layout.maxq:
        raise ValueError(f"codes out of range [0, {layout.maxq}]")
    shifts = torch.arange(per, dtype=torch.int32) * b  # (per,)
    words = (c.view(N, kp // per, per) << shifts).sum(-1, dtype=torch.int32)  # (N, W)
    if b == 3:
        byte_shifts = torch.tensor([0, 8, 16], dtype=torch.int32)
        words = ((words.unsqueeze(-1) >> byte_shifts) & 0xFF).reshape(N, -1)
    return words.to(torch.uint8)[:, :rb].contiguous()


def unpack_torch(packed: torch.Tensor, K: int, layout: Layout) -> torch.Tensor:
    """Unpack uint8 (N, row_bytes) to uint8 codes (N, K).

    Pure tensor ops that torch.export traces and the ONNX exporter converts: shifts and masks are
    written as floor division and remainder by powers of two (exact on these non-negative ints),
    because ONNX has no converter for ``aten.__rshift__``.
    """
    b = layout.bits
    N = packed.shape[0]
    if b == 8:
        return packed[:, :K]
    p = packed.to(torch.int32)
    if b == 3:
        rb = packed.shape[1]
        pad = (-rb) % 3
        if pad:
            p = torch.cat([p, torch.zeros((N, pad), dtype=torch.int32)], dim=1)
        p3 = p.view(N, -1, 3)
        words = p3[..., 0] + p3[..., 1] * 256 + p3[..., 2] * 65536  # (N, W) 24-bit LE words
    else:
        words = p
    per = _PER_WORD[b]
    pow2 = torch.tensor([1 << (b * i) for i in range(per)], dtype=torch.int32)
    codes = torch.remainder(torch.div(words.unsqueeze(-1), pow2, rounding_mode="floor"), layout.maxq + 1)
    return codes.reshape(N, -1)[:, :K].to(torch.uint8)


def dequantize(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, layout: Layout,
               K: int) -> torch.Tensor:
    """Float32 weight (N, K) from packed codes (N, row_bytes) and fp16 scale/zero (N, G)."""
    N = packed.shape[0]
    G = scale.shape[1]
    g = layout.group(K)
    u = unpack_torch(packed, G * g, layout).to(torch.float32).view(N, G, g)
    w = u * scale.to(torch.float32).unsqueeze(-1) + zero.to(torch.float32).unsqueeze(-1)
    return w.reshape(N, G * g)[:, :K]


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``scale * u + zero`` for unpacked codes (N, K) and per-group scale/zero (N, G), any float
    dtype (the quantizers use it in fp32/fp64 before rounding scale/zero to fp16)."""
    N, K = codes.shape
    g = layout.group(K)
    idx = torch.arange(K) // g
    return codes.to(scale.dtype) * scale[:, idx] + zero[:, idx]


# --- row-interleaved kernel layout (r16) --------------------------------------------------------
# A reordering of the bytes above for the int8-activation CPU kernels (edgekit/kernels/cpu,
# wq_r16_x86.h): rows in blocks of 16, each 64-byte line holding one 4-byte word of one group of
# the block's 16 rows, so that SIMD lanes are output rows (no per-row horizontal sums). The codes,
# scales and zeros are the same values; only their order changes, and rows are zero-padded to a
# multiple of 16. It applies where a group is a whole number of 16-byte units
# (``group * bits / 8 % 16 == 0``: w2 g%64, w4 g%32, w8 g%16 or per channel with K % 16 == 0;
# not 3 bits). With ``ub = row_bytes / G`` bytes per group and row, ``NB = ceil(N / 16)``::
#
#     qweight_r16[blk, (g * ub/4 + d) * 64 + 4 r + b] = qweight[16 blk + r, g * ub + 4 d + b]
#     scale_r16[blk, g * 16 + r] = scale[16 blk + r, g]          (zero_r16 likewise)
#
# qweight_r16 is uint8 [NB, 16 * row_bytes], scale_r16 / zero_r16 float16 [NB, 16 * G].
# ExecuTorch programs store linears in it (edgekit::linear_w{b}a8_r16, edgekit/export/quant_lower.py);
# checkpoints, ONNX and CUDA keep the layout above.

R16 = 16  # rows per block


def r16_applies(layout: Layout, K: int) -> bool:
    """Whether the r16 order exists for this layout and row length."""
    return layout.bits in (2, 4, 8) and (layout.group(K) * layout.bits) % 128 == 0


def interleave_r16(qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, layout: Layout,
                   K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qweight, scale, zero) in the canonical layout -> the r16 order (see above)."""
    if not r16_applies(layout, K):
        raise ValueError(f"no r16 order for {layout} at K={K}")
    N, rb = qweight.shape
    G = layout.n_groups(K)
    NB = -(-N // R16)
    pad = NB * R16 - N
    q = torch.nn.functional.pad(qweight, (0, 0, 0, pad)).reshape(NB, R16, G, rb // G // 4, 4)
    q = q.permute(0, 2, 3, 1, 4).reshape(NB, R16 * rb).contiguous()

    def meta(t: torch.Tensor) -> torch.Tensor:
        t = torch.cat([t, t.new_zeros((pad, G))]) if pad else t
        return t.reshape(NB, R16, G).transpose(1, 2).reshape(NB, R16 * G).contiguous()

    return q, meta(scale), meta(zero)


def deinterleave_r16(qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, layout: Layout,
                     K: int, N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of ``interleave_r16`` for ``N`` real rows."""
    NB = qweight.shape[0]
    G = layout.n_groups(K)
    rb = layout.row_bytes(K)
    q = qweight.reshape(NB, G, rb // G // 4, R16, 4).permute(0, 3, 1, 2, 4).reshape(NB * R16, rb)[:N]

    def meta(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(NB, G, R16).transpose(1, 2).reshape(NB * R16, G)[:N]

    return q.contiguous(), meta(scale).contiguous(), meta(zero).contiguous()
