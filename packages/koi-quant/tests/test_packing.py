"""Every packing format round-trips every code at every length, exhaustively."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from koi_quant import pack_bits, pack_trits, unpack_bits, unpack_trits


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_all_codes_all_positions(bits):
    per_byte = 8 // bits
    # every code at every slot of a byte, for lengths that do and do not fill the last byte
    for length in range(1, 3 * per_byte + 2):
        for code in range(1 << bits):
            codes = torch.full((length,), code, dtype=torch.uint8)
            codes[::2] = (code + 1) % (1 << bits)
            packed = pack_bits(codes, bits)
            assert packed.numel() == -(-length // per_byte)
            assert torch.equal(unpack_bits(packed, bits, length), codes)


def test_every_byte_value_for_two_bits():
    combos = torch.tensor(list(itertools.product(range(4), repeat=4)), dtype=torch.uint8).flatten()
    packed = pack_bits(combos, 2)
    assert sorted(packed.tolist()) == list(range(256))
    assert torch.equal(unpack_bits(packed, 2, combos.numel()), combos)


def test_every_trit_combination():
    combos = torch.tensor(list(itertools.product(range(3), repeat=5)), dtype=torch.uint8).flatten()
    packed = pack_trits(combos)
    assert packed.numel() == 243 and len(set(packed.tolist())) == 243
    assert torch.equal(unpack_trits(packed, combos.numel()), combos)


@given(st.lists(st.integers(0, 2), max_size=200))
def test_trits_any_length(values):
    codes = torch.tensor(values, dtype=torch.uint8)
    assert torch.equal(unpack_trits(pack_trits(codes), len(values)), codes)


def test_out_of_range_codes_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        pack_bits(torch.tensor([0, 4], dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="0, 1, 2"):
        pack_trits(torch.tensor([3], dtype=torch.uint8))
