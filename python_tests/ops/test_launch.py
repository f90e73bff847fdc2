"""_launch.blocks_per_program: how many blocks each partial-sum program of the Triton row kernels walks."""

import pytest

from pvdm_fast.ops._launch import blocks_per_program


@pytest.mark.parametrize("blocks", [1, 7, 1023, 1024, 2048, 8192, 8193, 10**6])
def test_every_block_covered_once_and_partials_bounded(blocks):
    per, programs = blocks_per_program(blocks)
    assert 1 <= per <= 16
    assert (programs - 1) * per < blocks <= programs * per  # every block, no empty program
    assert programs >= min(blocks, 1024) // 2 or per == 16  # enough programs to fill a GPU unless capped


def test_base_shapes():
    # triplane LayerNorm rows at B 4, T 16, 32 x 32, C 384: 8192 blocks of 8 tokens -> 1024 programs of 8
    assert blocks_per_program(8192) == (8, 1024)
    assert blocks_per_program(512, programs=1024 // 17) == (8, 64)  # axis_gather "xy": 512 blocks at 17 positions
    assert blocks_per_program(300) == (1, 300)


@pytest.mark.parametrize("blocks", [0, -3])
def test_no_blocks_is_value_error(blocks):
    with pytest.raises(ValueError, match="at least one block"):
        blocks_per_program(blocks)
