"""The models give the same outputs and gradients on every backend (issue 8/9 wiring): the fused
Triton kernels (CPU interpreter here, GPU in gpu-marked tests) against our plain-PyTorch path, both
measured against a float64 truth with the tolerance rule."""
import copy
import json

import pytest
import torch

from pvdm_fast import ops
from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
from pvdm_fast.models.unet import TriplaneUNet, UNetConfig
from tolerances import assert_close_2x

TINY_AE = AutoencoderConfig(resolution=8, frames=3, patch_size=4, channels=16, encoder_depth=1, decoder_depth=1,
                            heads=2, dim_head=32, axis_depth=2, axis_heads=2, axis_dim_head=32, axis_mlp_dim=16)
# 32 channels (GroupNorm's 32 groups) and one head of 32 dims (the attention kernels' smallest head)
TINY_UNET = UNetConfig(frames=3, height=2, width=2, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                       attention_resolutions=(1,), num_heads=1)


def _ae_loss(model, video):
    return (model(video) - video).abs().mean()


def _unet_loss(model, x, t, cond):
    return model(x, t, cond).square().mean()


def _run(model, loss_fn, inputs, backend, only=None):
    model = copy.deepcopy(model)
    model.zero_grad()
    with ops.use_backend(backend, only if backend != "reference" else None):
        loss = loss_fn(model, *inputs)
        loss.backward()
    return loss.detach(), {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _compare(model, loss_fn, inputs, only=None, backend="triton"):
    truth_model = copy.deepcopy(model).double()
    truth_inputs = [v.double() if v.is_floating_point() else v for v in inputs]
    truth = _run(truth_model, loss_fn, truth_inputs, "reference")
    ref = _run(model, loss_fn, inputs, "reference")
    fused = _run(model, loss_fn, inputs, backend, only)
    assert_close_2x(fused[0], ref[0], truth[0], "loss")
    assert set(fused[1]) == set(truth[1])
    for name in truth[1]:
        assert_close_2x(fused[1][name], ref[1][name], truth[1][name], f"grad {name}")


def test_autoencoder_training_step_same_on_triton_and_reference():
    torch.manual_seed(0)
    model = Autoencoder(TINY_AE)
    video = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    _compare(model, _ae_loss, [video])


def test_unet_training_step_same_on_triton_and_reference():
    torch.manual_seed(0)
    model = TriplaneUNet(TINY_UNET)
    for p in model.parameters():  # the zero-initialised output convs would hide most of the network
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 4, TINY_UNET.latent_length)
    cond = torch.randn_like(x)
    t = torch.tensor([700])
    # GroupNorm+SiLU's Triton kernel is checked on its own (test_group_norm_silu); in the interpreter
    # its one-program-per-group grid would dominate this test, so only the attention runs fused here
    _compare(model, _unet_loss, [x, t, cond], only=["joint_attention"])


# The ops with CUDA kernels; the CUDA-kernel tests below run these on `cuda`, the others on `reference`.
CUDA_OPS = sorted(name for name, spec in ops.dispatch.REGISTRY.items() if "cuda" in spec.dtypes)


def test_training_steps_same_on_emulated_cuda_kernels_and_reference(emulated_cuda):
    # The CUDA kernels (in the CPU emulation of python_tests/cuda_emu) inside whole models: the
    # autoencoder's axis gathers and triplane decode, the UNet's GroupNorm+SiLU.
    assert {"triplane_decode", "axis_gather", "group_norm_silu"} <= set(CUDA_OPS)
    torch.manual_seed(0)
    _compare(Autoencoder(TINY_AE), _ae_loss, [torch.rand(2, 3, 3, 8, 8) * 2 - 1], only=CUDA_OPS, backend="cuda")
    unet = TriplaneUNet(TINY_UNET)
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 4, TINY_UNET.latent_length)
    _compare(unet, _unet_loss, [x, torch.tensor([700]), torch.randn_like(x)], only=CUDA_OPS, backend="cuda")
    ran = emulated_cuda.calls
    assert ran["axis_gather_fwd"] == ran["axis_gather_bwd"] == 3  # one gather per plane
    assert ran["triplane_decode_fwd"] == ran["triplane_decode_bwd"] == 1
    assert ran["gn_silu_fwd"] == ran["gn_silu_bwd"] > 0


def _golden(name):
    from conftest import golden_dir
    from safetensors.torch import load_file

    d = golden_dir()
    if not d.is_dir():
        pytest.skip(f"golden vectors not found at {d}")
    tensors = load_file(str(d / f"{name}.safetensors"))
    sd = {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    return tensors, sd, json.loads((d / f"{name}.json").read_text())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_golden_models_agree_on_fused_and_reference_backends_on_gpu(dtype):
    from pvdm_fast.convert import autoencoder_from_official, unet_from_official

    tensors, sd, _ = _golden("ae_r32_t16_c32")
    ae = autoencoder_from_official(sd).cuda().to(dtype)
    video = tensors["input"].cuda()
    truth = tensors["recon"].cuda()
    with torch.no_grad():
        outs = {}
        for backend in ("reference", "auto"):
            with ops.use_backend(backend):
                outs[backend] = ae(video.to(dtype))
    assert_close_2x(outs["auto"], outs["reference"], truth, f"autoencoder {dtype}")

    tensors, sd, meta = _golden("unet_mc32")
    keys = ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "num_heads",
            "use_scale_shift_norm", "resblock_updown")
    unet = unet_from_official(sd, latent_shape=(16, 32, 32), **{k: meta[k] for k in keys}).cuda()
    with torch.no_grad():
        truth = unet.double()(tensors["x"].cuda().double(), tensors["t"].cuda(), tensors["cond"].cuda().double())
        unet = unet.to(dtype)
        outs = {}
        for backend in ("reference", "auto"):
            with ops.use_backend(backend):
                outs[backend] = unet(tensors["x"].cuda().to(dtype), tensors["t"].cuda(), tensors["cond"].cuda().to(dtype))
    assert_close_2x(outs["auto"], outs["reference"], truth, f"unet {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_golden_autoencoder_on_emulated_cuda_kernels(emulated_cuda, dtype):
    # Issue 9's wiring check (encode and decode through the fused path give the golden outputs), with the
    # CUDA kernels run by the CPU emulation; the GPU test above repeats it on the device.
    from pvdm_fast.convert import autoencoder_from_official

    tensors, sd, _ = _golden("ae_r32_t16_c32")
    ae = autoencoder_from_official(sd).to(dtype)
    video = tensors["input"].to(dtype)
    with torch.no_grad():
        with ops.use_backend("reference"):
            ref = ae(video)
        with ops.use_backend("cuda", CUDA_OPS):
            fused = ae(video)
    assert emulated_cuda.calls == {"axis_gather_fwd": 3, "triplane_decode_fwd": 1}
    assert_close_2x(fused, ref, tensors["recon"], f"golden autoencoder {dtype}, CUDA kernels emulated")


def test_cases_measured_faster_on_sdpa_take_the_model_sdpa_path(monkeypatch):
    # Where the kernel benchmark found SDPA faster for a case, `ops.fused(op, x, case)` answers False
    # and the model must take its own SDPA path for that call only, with the same results. Space
    # attention and the axis projections' first-query layer are routed here; time attention and the
    # other projection layers stay fused.
    real, asked, ran = ops.fused, [], []

    def routed(op, x, case=None):
        asked.append(case)
        return real(op, x, case) and not str(case).startswith(("space-", "first-"))

    kernel = ops.axial_attention

    def spy(qkv, heads, axis, **kw):
        ran.append("first" if kw.get("first_query_only") else axis)
        return kernel(qkv, heads, axis, **kw)

    monkeypatch.setattr(ops, "fused", routed)
    monkeypatch.setattr(ops, "axial_attention", spy)
    torch.manual_seed(0)
    model = Autoencoder(TINY_AE)
    video = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    _compare(model, _ae_loss, [video])
    assert {"time-L3", "space-L4", "sequence-L4", "first-L4", "sequence-L3", "first-L3"} <= set(asked)
    assert "time" in ran and "sequence" in ran
    assert "space" not in ran and "first" not in ran


def test_unet_joint_attention_routed_to_sdpa_by_length(monkeypatch):
    real, asked = ops.fused, []

    def routed(op, x, case=None):
        asked.append((op, case))
        return real(op, x, case) and op != "joint_attention"

    monkeypatch.setattr(ops, "fused", routed)
    calls = []
    monkeypatch.setattr(ops, "joint_attention", lambda *a, **k: calls.append(1))  # must not run
    torch.manual_seed(0)
    model = TriplaneUNet(TINY_UNET)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 4, TINY_UNET.latent_length)
    _compare(model, _unet_loss, [x, torch.tensor([700]), torch.randn_like(x)], only=["joint_attention"])
    assert ("joint_attention", f"L{TINY_UNET.latent_length}") in asked and not calls


@pytest.mark.gpu
def test_measured_sdpa_routes_apply_in_auto_mode_on_gpu(tmp_path, monkeypatch):
    from pvdm_fast.ops import dispatch

    monkeypatch.setenv("PVDM_BACKEND_PREFS", str(tmp_path / "prefs.json"))
    monkeypatch.setattr(dispatch, "SHIPPED_PREFS", tmp_path / "no_shipped_prefs.json")
    monkeypatch.setattr(dispatch, "_prefs", None)
    gpu = torch.cuda.get_device_name()
    dispatch.save_preferences({gpu: {"axial_attention@space-L4": {"float32": {"fwd": "sdpa", "fwd+bwd": "triton"}}}})
    x = torch.zeros(1, device="cuda")
    assert not ops.fused("axial_attention", x, case="space-L4")          # forward only: SDPA measured faster
    assert ops.fused("axial_attention", x.requires_grad_(), case="space-L4")  # with a backward: the kernel
    assert ops.fused("axial_attention", x, case="time-L3")               # not measured: the kernel
    with ops.use_backend("triton"):
        assert ops.fused("axial_attention", x.detach(), case="space-L4")  # forced: never rerouted
    torch.manual_seed(0)
    model = Autoencoder(TINY_AE).cuda()
    video = torch.rand(2, 3, 3, 8, 8, device="cuda") * 2 - 1
    with torch.no_grad():
        routed = model(video)
        with ops.use_backend("reference"):
            ref = model(video)
        truth = model.double()(video.double())
    assert_close_2x(routed, ref, truth, "autoencoder with space attention on SDPA")
