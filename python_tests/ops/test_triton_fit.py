"""_fit.launch: a pipelined kernel that does not fit the device's shared memory is launched shallower."""
import pytest
import torch
from triton.runtime.errors import OutOfResources

from pvdm_fast.ops.triton import _fit


class FakeKernel:
    """Refuses, as Triton does before launching, any depth above `fits`; records the depths tried."""

    def __init__(self, fits):
        self.fits, self.tried = fits, []

    def __getitem__(self, grid):
        def run(*args, num_stages, **options):
            self.tried.append(num_stages)
            if num_stages > self.fits:
                raise OutOfResources(300000, 232448, "shared memory")
        return run


def test_a_launch_steps_down_until_it_fits_and_remembers_the_depth():
    k, x = FakeKernel(fits=1), torch.zeros(2, dtype=torch.float16)
    assert _fit.launch(k, (1,), (x,), 3, BLOCK=16, num_warps=4) == 1
    assert k.tried == [3, 2, 1]
    assert _fit.launch(k, (1,), (x,), 3, BLOCK=16, num_warps=4) == 1
    assert k.tried == [3, 2, 1, 1]  # the second call goes straight to the depth that fitted
    # another device, dtype or variant plans afresh
    for args, options in (((x.to("meta"),), dict(BLOCK=16, num_warps=4)),  # another device
                          ((x.float(),), dict(BLOCK=16, num_warps=4)),
                          ((x,), dict(BLOCK=32, num_warps=4))):
        k.tried.clear()
        assert _fit.launch(k, (1,), args, 3, **options) == 1
        assert k.tried == [3, 2, 1]


def test_a_kernel_that_fits_runs_at_its_planned_depth_and_one_that_never_fits_raises():
    x = torch.zeros(2)
    k = FakeKernel(fits=3)
    assert _fit.launch(k, (1,), (x,), 3, BLOCK=64) == 3 and k.tried == [3]
    assert _fit.launch(k, (1,), (x,), 1, BLOCK=64) == 1  # a shallower plan is kept
    never = FakeKernel(fits=0)
    with pytest.raises(OutOfResources):
        _fit.launch(never, (1,), (x,), 3, BLOCK=128)
    assert never.tried == [3, 2, 1]
