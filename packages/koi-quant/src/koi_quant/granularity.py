"""Where scales live: one per tensor, per row, per group of g inputs, or per 2-D tile.

Every granularity is a block shape over the (rows, cols) weight: tensor = the whole matrix,
row = (1, cols), group = (1, g), tile = (h, w). Blocks that overhang the edge are padded and
their statistics counted over real elements only, so odd shapes need no special case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Granularity:
    kind: str = "row"  # "tensor" | "row" | "group" | "tile"
    group_size: int | None = None
    tile: tuple[int, int] | None = None

    def block_shape(self, rows: int, cols: int) -> tuple[int, int]:
        if self.kind == "tensor":
            return rows, cols
        if self.kind == "row":
            return 1, cols
        if self.kind == "group":
            if not self.group_size or self.group_size < 1:
                raise ValueError(f"group granularity needs group_size >= 1, got {self.group_size}")
            return 1, self.group_size
        if self.kind == "tile":
            if not self.tile or min(self.tile) < 1:
                raise ValueError(f"tile granularity needs a tile like (128, 128), got {self.tile}")
            return self.tile
        raise ValueError(f"granularity kind: expected tensor, row, group or tile, got {self.kind!r}")


PER_TENSOR = Granularity("tensor")
PER_ROW = Granularity("row")


def per_group(size: int) -> Granularity:
    return Granularity("group", group_size=size)


def per_tile(height: int, width: int | None = None) -> Granularity:
    return Granularity("tile", tile=(height, width or height))


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """View any tensor as (rows, cols): vectors are one row, higher ranks fold leading dims."""
    if w.ndim == 0:
        return w.reshape(1, 1)
    if w.ndim == 1:
        return w.reshape(1, -1)
    return w.reshape(-1, w.shape[-1])


def to_blocks(m: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) -> (nbr, nbc, bh*bw) blocks, zero-padded, plus a same-shaped mask of real elements."""
    rows, cols = m.shape
    bh, bw = min(block[0], rows), min(block[1], cols)
    pad_r, pad_c = (-rows) % bh, (-cols) % bw
    mask = torch.ones_like(m, dtype=torch.bool)
    if pad_r or pad_c:
        m = F.pad(m, (0, pad_c, 0, pad_r))
        mask = F.pad(mask, (0, pad_c, 0, pad_r))
    nbr, nbc = m.shape[0] // bh, m.shape[1] // bw

    def blockify(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(nbr, bh, nbc, bw).permute(0, 2, 1, 3).reshape(nbr, nbc, bh * bw)

    return blockify(m), blockify(mask)


def from_blocks(blocks: torch.Tensor, block: tuple[int, int], rows: int, cols: int) -> torch.Tensor:
    """Inverse of `to_blocks`, dropping the padding."""
    bh, bw = min(block[0], rows), min(block[1], cols)
    nbr, nbc = blocks.shape[0], blocks.shape[1]
    m = blocks.reshape(nbr, nbc, bh, bw).permute(0, 2, 1, 3).reshape(nbr * bh, nbc * bw)
    return m[:rows, :cols]
