"""CUDA-graph sampling loop: same samples as the eager loop, and no host synchronisation per step."""
import pytest
import torch

from pvdm_fast.diffusion import samplers as S

T = 1000
ABAR = torch.cumprod(1 - torch.linspace(0.0015**0.5, 0.0195**0.5, T, dtype=torch.float64) ** 2, 0)


def _gaussian_eps(device):
    abar = ABAR.float().to(device)

    def eps_fn(x, t):
        a = abar[t].view(-1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * 0.2) / (a * 0.09 + 1 - a)
    return eps_fn


@pytest.mark.gpu
@pytest.mark.parametrize("name,steps", [("ddim", 50), ("ddpm", 40), ("dpm++2m", 12)])
def test_graph_loop_matches_eager_and_never_syncs(name, steps):
    from pvdm_fast.diffusion.cuda_graph import CudaGraphLoop

    dev = torch.device("cuda")
    eps_fn = _gaussian_eps(dev)
    plan = S.make_plan(name, ABAR, steps).to(dev)
    shape = (3, 4, 40)
    eager = S.run_plan(eps_fn, plan, shape, noise=S.PerSampleNoise([1, 2, 3], dev))
    loop = CudaGraphLoop()
    first = S.run_plan(eps_fn, plan, shape, noise=S.PerSampleNoise([1, 2, 3], dev), loop=loop)
    torch.cuda.synchronize()
    # The second run replays the captured graph: any host synchronisation raises here.
    torch.cuda.set_sync_debug_mode("error")
    try:
        second = S.run_plan(eps_fn, plan, shape, noise=S.PerSampleNoise([1, 2, 3], dev), loop=loop)
        eager_again = S.run_plan(eps_fn, plan, shape, noise=S.PerSampleNoise([1, 2, 3], dev))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(first, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eager_again, eager, rtol=0, atol=0)
    assert len(loop._graphs) == 1  # reused, not recaptured


def test_graph_loop_rejects_cpu_tensors():
    from pvdm_fast.diffusion.cuda_graph import CudaGraphLoop

    plan = S.make_plan("ddim", ABAR, 4)
    with pytest.raises(ValueError, match="CUDA"):
        S.run_plan(_gaussian_eps("cpu"), plan, (1, 1, 4), noise=S.PerSampleNoise([0]), loop=CudaGraphLoop())


@pytest.mark.parametrize("name,steps", [("ddim", 6), ("ddpm", 5), ("dpm++2m", 4)])
def test_static_step_logic_matches_eager_without_capture(name, steps):
    """The graphed loop's device-side step counter and buffers, run uncaptured on the CPU."""
    from pvdm_fast.diffusion.cuda_graph import CudaGraphLoop

    eps_fn, shape = _gaussian_eps("cpu"), (3, 2, 16)
    plan = S.make_plan(name, ABAR, steps)
    eager = S.run_plan(eps_fn, plan, shape, noise=S.PerSampleNoise([4, 5, 6]))
    loop = CudaGraphLoop(capture=False)
    for _ in range(2):  # the second run reuses the buffers: state must be reset between runs
        static = S.run_plan(eps_fn, plan, shape, noise=S.PerSampleNoise([4, 5, 6]), loop=loop)
        torch.testing.assert_close(static, eager, rtol=0, atol=1e-6)
    # another plan of the same length reuses the buffers with the new tables
    other = S.make_plan("ddim", ABAR, steps, 0.0) if name != "ddim" else S.make_plan("ddim", ABAR, steps, 0.3)
    torch.testing.assert_close(S.run_plan(eps_fn, other, shape, noise=S.PerSampleNoise([4, 5, 6]), loop=loop),
                               S.run_plan(eps_fn, other, shape, noise=S.PerSampleNoise([4, 5, 6])),
                               rtol=0, atol=1e-6)
