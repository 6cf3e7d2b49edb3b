"""The packed layout: torch packers against the scalar reference, bit-exact, for every width."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.quant.layout import (Layout, dequantize, dequantize_reference, pack_reference, pack_torch,
                                  unpack_reference, unpack_torch)

BITS = [2, 3, 4, 8]


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(BITS), n=st.integers(1, 5), k=st.integers(1, 80),
       group=st.sampled_from([None, 8, 16, 32, 64, 24]), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_roundtrip_matches_reference(bits, n, k, group, seed):
    lay = Layout(bits, group)
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, lay.maxq + 1, size=(n, k), dtype=np.int64)
    ref = pack_reference(codes, lay)
    fast = pack_torch(torch.from_numpy(codes), lay)
    assert fast.dtype == torch.uint8
    assert fast.shape == (n, lay.row_bytes(k))
    assert np.array_equal(fast.numpy(), ref)
    assert np.array_equal(unpack_torch(fast, k, lay).numpy(), codes)
    assert np.array_equal(unpack_reference(ref, k, lay), codes)


def test_byte_order_examples():
    # 2-bit: code k at bits 2*(k%4) of byte k//4
    assert pack_torch(torch.tensor([[1, 2, 3, 0, 3]]), Layout(2)).tolist() == [[0b00111001, 0b00000011]]
    # 4-bit: low nibble first
    assert pack_torch(torch.tensor([[0xA, 0x5, 0xF]]), Layout(4)).tolist() == [[0x5A, 0x0F]]
    # 3-bit: 8 codes in a 24-bit little-endian word
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]])
    word = sum(c << (3 * i) for i, c in enumerate(codes[0].tolist()))
    assert pack_torch(codes, Layout(3)).tolist() == [[word & 255, (word >> 8) & 255, word >> 16]]
    # 8-bit: one byte per code
    assert pack_torch(torch.tensor([[7, 255]]), Layout(8)).tolist() == [[7, 255]]


@pytest.mark.parametrize("bits,group,k,bpw", [(2, 64, 4096, 2.5), (2, 128, 4096, 2.25), (3, 64, 4096, 3.5),
                                              (4, 32, 4096, 5.0), (4, 128, 4096, 4.25), (8, None, 4096, 8 + 32 / 4096)])
def test_bits_per_weight(bits, group, k, bpw):
    lay = Layout(bits, group)
    assert lay.bits_per_weight(k) == pytest.approx(bpw)
    assert lay.bytes_for(10, k) * 8 == pytest.approx(10 * k * bpw)


def test_bits_per_weight_matches_planner_presets():
    presets = pytest.importorskip("edgekit.plan.presets", reason="planner presets not present")
    from edgekit.quant.config import PRESETS

    for name, (bits, gs) in PRESETS.items():
        p = presets.get_preset(name)
        assert (p.bits, p.group_size) == (bits, gs), name
        if p.offset_bytes:  # w8 is symmetric in the planner; the layout always stores a zero
            assert Layout(bits, gs).bits_per_weight(4096) == pytest.approx(p.bits_per_weight(4096))


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from(BITS), k=st.integers(1, 70), group=st.sampled_from([None, 16, 32]),
       seed=st.integers(0, 1000))
def test_dequantize_matches_reference_with_padding(bits, k, group, seed):
    lay = Layout(bits, group)
    g = torch.Generator().manual_seed(seed)
    n, G = 3, lay.n_groups(k)
    codes = torch.randint(0, lay.maxq + 1, (n, k), generator=g)
    scale = torch.rand((n, G), generator=g).half()
    zero = torch.randn((n, G), generator=g).half()
    packed = pack_torch(codes, lay)
    ref = dequantize_reference(packed.numpy(), scale.numpy(), zero.numpy(), lay, k)
    got = dequantize(packed, scale, zero, lay, k)
    assert got.shape == (n, k)
    assert np.array_equal(got.numpy(), ref)


def test_rejects_bad_layouts_and_codes():
    with pytest.raises(ValueError):
        Layout(5, 64)
    with pytest.raises(ValueError):
        pack_torch(torch.tensor([[4]]), Layout(2))
