"""Pipeline: shapes, per-video seeds, guidance call counts, long-video conditioning, model files."""
import dataclasses

import pytest
import torch

from pipeline_fixtures import tiny_models


class CountingUNet(torch.nn.Module):
    """Wraps the UNet and records (batch, cond is None, cond's second half is zero) per call."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.config, self.calls = unet, unet.config, []

    def forward(self, x, t, cond=None):
        half = None if cond is None else bool((cond[x.shape[0] // 2:] == 0).all())
        self.calls.append((x.shape[0], cond is None, half))
        return self.unet(x, t, cond)


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def pipe(models):
    from pvdm_fast.pipeline import Pipeline

    ae, unet, diffusion = models
    return Pipeline(ae, unet, diffusion, device="cpu")


def test_output_is_uint8_video_of_the_requested_length(pipe):
    videos = pipe(num_videos=2, frames=8, sampler="dpm++2m", steps=3, seed=0)
    assert videos.dtype == torch.uint8 and videos.shape == (2, 8, 16, 16, 3)
    assert videos.float().std() > 0  # not a constant image
    assert pipe.clip_frames == 4 and pipe.latent_shape == (4, 4 * 4 + 4 * 4 + 4 * 4)


def test_same_seed_same_video_whatever_the_batch(pipe):
    kw = dict(frames=4, sampler="ddim", steps=3, eta=1.0)
    batch = pipe(seeds=[3, 4, 5], **kw)
    alone = pipe(seeds=[4], **kw)
    chunked = pipe(seeds=[3, 4, 5], batch_size=2, **kw)
    # Batched matmuls may round differently on the CPU; uint8 truncation can flip a value by one.
    assert (batch[1].int() - alone[0].int()).abs().max() <= 1
    assert (batch.int() - chunked.int()).abs().max() <= 1
    assert (batch[0].int() - batch[1].int()).abs().float().mean() > 5  # seeds do matter


def test_guidance_zero_makes_one_call_per_step_and_w_batches_cond_and_uncond(models):
    from pvdm_fast.pipeline import Pipeline

    ae, unet, diffusion = models
    counting = CountingUNet(unet)
    pipe = Pipeline(ae, counting, diffusion, device="cpu")
    steps = 3
    pipe(num_videos=2, frames=8, sampler="ddim", steps=steps, guidance=0.0)
    # clip 0: zero condition (cond=None); clip 1: conditioned, still one call of batch 2 per step
    assert counting.calls == [(2, True, None)] * steps + [(2, False, False)] * steps
    counting.calls.clear()
    pipe(num_videos=2, frames=8, sampler="ddim", steps=steps, guidance=1.5)
    # w > 0: the conditioned clip runs cond and zero-cond halves as ONE call of batch 4
    assert counting.calls == [(2, True, None)] * steps + [(4, False, True)] * steps


def test_guidance_changes_the_conditioned_clip_only(pipe):
    kw = dict(seeds=[1], frames=8, sampler="ddim", steps=3, eta=0.0)
    plain, guided = pipe(guidance=0.0, **kw), pipe(guidance=3.0, **kw)
    assert torch.equal(plain[:, :4], guided[:, :4])
    assert not torch.equal(plain[:, 4:], guided[:, 4:])


@pytest.mark.parametrize("condition,encodes", [("reencode", 2), ("latent", 0)])
def test_long_video_reencodes_each_previous_clip(models, monkeypatch, condition, encodes):
    from pvdm_fast.pipeline import Pipeline

    ae, unet, diffusion = models
    pipe = Pipeline(ae, unet, diffusion, device="cpu")
    seen = []
    original = type(ae).encode
    monkeypatch.setattr(type(ae), "encode", lambda self, v: seen.append(v.shape) or original(self, v))
    videos = pipe(num_videos=1, frames=12, sampler="dpm++2m", steps=2, condition=condition)
    assert videos.shape[1] == 12 and len(seen) == encodes
    assert all(shape == (1, 3, 4, 16, 16) for shape in seen)


def test_context_conditions_the_first_clip_on_the_last_context_clip(models):
    # Continuing videos: the first new clip is conditioned on the encoded last clip of each context (the
    # frames before it do not matter), and uint8 and float contexts of the same frames give one result.
    from pvdm_fast.pipeline import Pipeline, to_uint8

    ae, unet, diffusion = models
    conds = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet, self.config = unet, unet.config

        def forward(self, x, t, cond=None):
            conds.append(None if cond is None else cond.clone())
            return self.unet(x, t, cond)

    pipe = Pipeline(ae, Recording(), diffusion, device="cpu")
    gen = torch.Generator().manual_seed(0)
    context = torch.rand((2, 3, 6, 16, 16), generator=gen) * 2 - 1   # 6 frames: the last 4 are used
    kw = dict(seeds=[7, 8], frames=8, sampler="ddim", steps=2, eta=1.0)
    videos = pipe(context=context, **kw)
    assert videos.shape == (2, 8, 16, 16, 3)
    expected = pipe._encode(context[:, :, 2:])
    assert conds[0] is not None and torch.allclose(conds[0], expected, atol=1e-6)
    assert all(c is not None for c in conds)  # every clip conditioned, none from a zero condition
    # the frames before the last clip are ignored; uint8 frames are the float frames quantised
    changed = context.clone()
    changed[:, :, :2] = 0
    assert torch.equal(pipe(context=changed, **kw), videos)
    as_uint8 = to_uint8(context)
    from_uint8 = pipe(context=as_uint8, **kw)
    from_float = pipe(context=as_uint8.permute(0, 4, 1, 2, 3).float() / 127.5 - 1, **kw)
    assert torch.equal(from_uint8, from_float)
    # another context, another continuation (same seeds)
    assert (pipe(context=context.flip(0), **kw)[0].int() - videos[0].int()).abs().float().mean() > 1
    # batching does not change which context a video continues
    alone = pipe(context=context[1:], seeds=[8], frames=8, sampler="ddim", steps=2, eta=1.0)
    assert (alone[0].int() - videos[1].int()).abs().max() <= 1


def test_bad_contexts_are_value_errors(models, pipe):
    from pvdm_fast.pipeline import Pipeline

    good = torch.zeros((1, 3, 4, 16, 16))
    for bad, match in [(torch.zeros((2, 3, 4, 16, 16)), "1 videos"), (torch.zeros((1, 3, 3, 16, 16)), "at least 4"),
                       (torch.zeros((1, 3, 4, 8, 8)), "16x16"), (good + 200, r"\[-1, 1\]"),
                       (good * float("nan"), "finite"), (torch.zeros((1, 4, 16, 16, 3)), "uint8"),
                       (torch.zeros((1, 4, 16, 16)), "uint8"), (good.numpy(), "tensor")]:
        with pytest.raises(ValueError, match=match):
            pipe(seeds=[0], sampler="ddim", steps=1, context=bad)
    ae, unet, diffusion = tiny_models(cond_model=False)
    with pytest.raises(ValueError, match="conditional UNet"):
        Pipeline(ae, unet, diffusion, device="cpu")(seeds=[0], sampler="ddim", steps=1, context=good)


def test_from_checkpoints_gives_the_same_videos(models, pipe, tmp_path):
    from pvdm_fast.models.io import save_weights
    from pvdm_fast.pipeline import Pipeline

    ae, unet, diffusion = models
    save_weights(tmp_path / "ae.safetensors", ae.state_dict(), "autoencoder", dataclasses.asdict(ae.config))
    # a flat UNet config (no sections) is accepted too: the schedule then takes its defaults
    save_weights(tmp_path / "unet.safetensors", unet.state_dict(), "diffusion", dataclasses.asdict(unet.config))
    loaded = Pipeline.from_checkpoints(autoencoder=tmp_path / "ae.safetensors",
                                       diffusion=tmp_path / "unet.safetensors", device="cpu")
    kw = dict(seeds=[7], frames=4, sampler="dpm++2m", steps=3)
    assert torch.equal(loaded(**kw), pipe(**kw))
    with pytest.raises(ValueError, match="autoencoder"):
        Pipeline.from_checkpoints(autoencoder=tmp_path / "unet.safetensors", diffusion=tmp_path / "unet.safetensors")


def test_bad_arguments_raise_value_errors(models, pipe):
    from pvdm_fast.pipeline import Pipeline

    ae, unet, diffusion = models
    with pytest.raises(ValueError, match="multiple"):
        pipe(frames=6)
    with pytest.raises(ValueError, match="condition"):
        pipe(frames=8, condition="pixels")
    with pytest.raises(ValueError, match="precision"):
        Pipeline(ae, unet, diffusion, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="CUDA"):
        Pipeline(ae, unet, diffusion, device="cpu", cuda_graph=True)
    other = tiny_models()[1]
    other.config = dataclasses.replace(other.config, frames=8)
    with pytest.raises(ValueError, match="grid"):
        Pipeline(ae, other, diffusion, device="cpu")


def test_unconditional_unet_samples_one_clip_and_refuses_long_videos():
    from pvdm_fast.pipeline import Pipeline

    ae, unet, diffusion = tiny_models(cond_model=False)
    pipe = Pipeline(ae, unet, diffusion, device="cpu")
    assert pipe(frames=4, sampler="dpm++2m", steps=2).shape == (1, 4, 16, 16, 3)
    with pytest.raises(ValueError, match="conditional"):
        pipe(frames=8)


def test_import_pvdm_fast_stays_light():
    import subprocess
    import sys

    code = ("import sys, pvdm_fast; assert 'torch' not in sys.modules, 'torch'; "
            "p = pvdm_fast.Pipeline; assert 'av' not in sys.modules and 'tensorboard' not in sys.modules; "
            "print(p.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "Pipeline", out.stderr


def test_from_official_loads_official_style_files_for_a_preset(tmp_path):
    """Official .pth files (DDP / LDM key prefixes, the UNet's `zeros` buffer) with the `demo` preset
    give the same videos as the same weights in memory."""
    from omegaconf import OmegaConf

    from pipeline_fixtures import randomize
    from pvdm_fast.configs import load_config
    from pvdm_fast.diffusion.schedule import DiffusionConfig
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.unet import TriplaneUNet, UNetConfig
    from pvdm_fast.pipeline import Pipeline

    cfg = load_config("demo")
    section = lambda name: OmegaConf.to_container(cfg[name], resolve=True)  # noqa: E731
    torch.manual_seed(1)
    ae = Autoencoder(AutoencoderConfig(**section("autoencoder"))).eval()
    unet = randomize(TriplaneUNet(UNetConfig(**section("unet"))).eval())
    torch.save({f"module.{k}": v for k, v in ae.state_dict().items()}, tmp_path / "ae.pth")
    official_unet = {f"diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    official_unet["diffusion_model.zeros"] = torch.zeros(1, 4, unet.config.latent_length)
    torch.save(official_unet, tmp_path / "unet.pth")

    loaded = Pipeline.from_official(tmp_path / "ae.pth", tmp_path / "unet.pth", "demo", device="cpu")
    direct = Pipeline(ae, unet, DiffusionConfig(**section("diffusion")), device="cpu")
    kw = dict(seeds=[2], sampler="ddim", steps=2, eta=0.0)
    assert torch.equal(loaded(**kw), direct(**kw))
    with pytest.raises(ValueError, match="grid"):  # the demo autoencoder with a UNet for another grid
        Pipeline.from_official(tmp_path / "ae.pth", tmp_path / "unet.pth", "demo",
                               overrides=["unet.frames=16"], device="cpu")


def test_convert_then_load_equals_loading_the_official_files_directly(tmp_path):
    """`pvdm convert` + from_checkpoints and from_official give the same videos for a preset whose
    axis projections do not use the official 4 heads (convert used to force 4 there)."""
    from omegaconf import OmegaConf

    from pipeline_fixtures import randomize
    from pvdm_fast.cli import main
    from pvdm_fast.configs import load_config
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.unet import TriplaneUNet, UNetConfig
    from pvdm_fast.pipeline import Pipeline

    cfg = load_config("tiny")
    section = lambda name: OmegaConf.to_container(cfg[name], resolve=True)  # noqa: E731
    assert section("autoencoder")["axis_heads"] != 4
    torch.manual_seed(3)
    ae = randomize(Autoencoder(AutoencoderConfig(**section("autoencoder"))).eval())
    unet = randomize(TriplaneUNet(UNetConfig(**section("unet"))).eval())
    torch.save({f"module.{k}": v for k, v in ae.state_dict().items()}, tmp_path / "ae.pth")
    torch.save({f"diffusion_model.{k}": v for k, v in unet.state_dict().items()}, tmp_path / "unet.pth")
    for kind, src, dest in (("autoencoder", "ae.pth", "ae.safetensors"), ("unet", "unet.pth", "dm.safetensors")):
        assert main(["convert", "--kind", kind, "--config", "tiny", str(tmp_path / src), str(tmp_path / dest)]) == 0
    converted = Pipeline.from_checkpoints(tmp_path / "ae.safetensors", tmp_path / "dm.safetensors", device="cpu")
    direct = Pipeline.from_official(tmp_path / "ae.pth", tmp_path / "unet.pth", "tiny", device="cpu")
    assert converted.autoencoder.config.axis_heads == section("autoencoder")["axis_heads"]
    kw = dict(seeds=[4], sampler="ddim", steps=2, eta=0.0)
    assert torch.equal(converted(**kw), direct(**kw))
    # a UNet for another latent grid than the preset's autoencoder converts on its own (the grid check
    # between the two models belongs to loading both, not to converting one)
    other = randomize(TriplaneUNet(UNetConfig(**{**section("unet"), "frames": 8})).eval())
    torch.save({f"diffusion_model.{k}": v for k, v in other.state_dict().items()}, tmp_path / "unet8.pth")
    assert main(["convert", "--kind", "unet", "--config", "tiny", str(tmp_path / "unet8.pth"),
                 str(tmp_path / "dm8.safetensors"), "unet.frames=8"]) == 0
    with pytest.raises(ValueError, match="axis_heads=3 does not divide"):
        from pvdm_fast.convert import convert_official_file

        convert_official_file("autoencoder", tmp_path / "ae.pth", tmp_path / "x.safetensors", "tiny",
                              ["autoencoder.axis_heads=3"])


@pytest.mark.gpu
def test_cuda_graph_and_compile_give_the_eager_videos_on_gpu():
    from pvdm_fast.pipeline import Pipeline

    ae, unet, diffusion = tiny_models()  # fresh modules: a Pipeline moves its models to its device
    kw = dict(seeds=[1, 2], frames=8, sampler="ddim", steps=5, eta=1.0, guidance=1.0)
    eager = Pipeline(ae, unet, diffusion, device="cuda")(**kw)
    graphed = Pipeline(ae, unet, diffusion, device="cuda", cuda_graph=True)
    first, again = graphed(**kw), graphed(**kw)  # capture, then pure replay
    compiled = Pipeline(ae, unet, diffusion, device="cuda", compile=True, cuda_graph=True)(**kw)
    for other in (first, again, compiled):
        diff = (other.int() - eager.int()).abs()
        assert diff.float().mean() < 0.5 and diff.max() <= 8, (diff.float().mean(), diff.max())
    assert torch.equal(first, again)
