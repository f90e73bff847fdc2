"""`Pipeline`: autoencoder + triplane UNet + sampler -> uint8 videos, for Python users and `pvdm sample`.

    pipe = Pipeline.from_checkpoints(autoencoder="ae.safetensors", diffusion="diffusion.safetensors")
    videos = pipe(num_videos=4, frames=32, seed=0)          # uint8 (4, 32, H, W, 3)

Video j of a call gets seed `seed + j` (or `seeds[j]`) and its own generator, so it does not depend
on the batch it was sampled in. On CUDA the models run under bf16 autocast (the sampler state stays
float32); `compile=True` wraps the UNet in torch.compile and `cuda_graph=True` replays a captured
denoising step.
"""
from __future__ import annotations

import contextlib
import operator
import os
from typing import Sequence

import torch

from pvdm_fast.diffusion.long_video import CONDITIONS, iter_long_video, num_clips
from pvdm_fast.diffusion.samplers import EagerLoop, PerSampleNoise, SamplingPlan, make_plan, run_plan

DEFAULT_STEPS = {"ddim": 400, "ddpm": None, "dpm++2m": 25}
"""Steps when none are given: the official 400 for DDIM, every timestep for DDPM."""

PRECISIONS = ("auto", "bf16", "fp32")


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3) on the CPU.

    Truncates rather than rounds, as the official evaluation converts samples before computing FVD.
    """
    return ((video.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 4, 1).cpu()


def _device(device: str | torch.device | None) -> torch.device:
    from pvdm_fast.devices import resolve_device

    return resolve_device(device)


class Pipeline:
    """Samples videos from a trained (or converted official) PVDM.

    The modules are put in eval mode and moved to `device` in place (as `nn.Module.to` does).
    `diffusion` is a DiffusionConfig (schedule and default guidance); None takes the defaults.
    """

    def __init__(self, autoencoder: torch.nn.Module, unet: torch.nn.Module, diffusion=None, *,
                 device: str | torch.device | None = None, precision: str = "auto",
                 compile: bool = False, cuda_graph: bool = False):
        from pvdm_fast.diffusion.schedule import DiffusionConfig

        self.device = _device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.amp = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True (--cuda-graph) needs a CUDA device, and this pipeline runs on "
                             f"{self.device}; drop --cuda-graph or pass --device cuda")
        self.autoencoder = autoencoder.eval().requires_grad_(False).to(self.device)
        self.unet = unet.eval().requires_grad_(False).to(self.device)
        self.diffusion = diffusion if diffusion is not None else DiffusionConfig()
        from pvdm_fast.models.unet import check_latents_match

        check_latents_match(self.autoencoder.config, self.unet.config,
                            "the two checkpoints were not trained together")
        self.alphas_cumprod = _alphas_cumprod(self.diffusion)
        self._net = torch.compile(self.unet, dynamic=False) if compile else self.unet
        if cuda_graph:
            from pvdm_fast.diffusion.cuda_graph import CudaGraphLoop

            self._loop = CudaGraphLoop()
        else:
            self._loop = EagerLoop()
        self._eps_fns: dict[tuple, object] = {}
        self._cond_bufs: dict[int, torch.Tensor] = {}

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_checkpoints(cls, autoencoder: str | os.PathLike, diffusion: str | os.PathLike,
                         **options) -> "Pipeline":
        """From pvdm_fast weight files (`save_weights`: the config travels inside the file)."""
        unet, diffusion_config = load_diffusion(diffusion)
        return cls(load_autoencoder(autoencoder), unet, diffusion_config, **options)

    @classmethod
    def from_official(cls, autoencoder_pth: str | os.PathLike, diffusion_pth: str | os.PathLike,
                      config="ucf101-256", *, overrides: Sequence[str] = (), **options) -> "Pipeline":
        """From the official PVDM `.pth` files; `config` is a preset name, a YAML path or a config."""
        ae, unet, diffusion_config = load_official(autoencoder_pth, diffusion_pth, config, overrides)
        return cls(ae, unet, diffusion_config, **options)

    # ---- properties ---------------------------------------------------------------------------

    @property
    def clip_frames(self) -> int:
        return int(self.autoencoder.config.frames)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(channels, length) of one flat latent."""
        return (int(self.unet.config.out_channels), int(self.unet.config.latent_length))

    # ---- sampling -----------------------------------------------------------------------------

    def plan(self, sampler: str = "ddim", steps: int | None = None, eta: float | None = None) -> SamplingPlan:
        steps = DEFAULT_STEPS.get(sampler) if steps is None else steps
        return make_plan(sampler, self.alphas_cumprod, steps, eta).to(self.device)

    @torch.no_grad()
    def __call__(self, num_videos: int = 1, frames: int | None = None, *, sampler: str = "ddim",
                 steps: int | None = None, eta: float | None = None, guidance: float | None = None,
                 seed: int = 0, seeds: Sequence[int] | None = None, condition: str = "reencode",
                 clip_x0: bool = True, batch_size: int | None = None, progress: bool = False,
                 context: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (num_videos, frames, H, W, 3) on the CPU; frames defaults to one clip.

        `context`: continue given videos instead of starting from nothing, one per video: uint8
        (N, T, H, W, 3) as this returns, or float (N, 3, T, H, W) in [-1, 1], T >= the clip length.
        Their last clip conditions the first generated clip (as each generated clip conditions the
        next), and the result holds only the `frames` new frames."""
        seeds = list(range(_int(seed, "seed"), _int(seed, "seed") + _int(num_videos, "num_videos"))
                     ) if seeds is None else [_int(s, "seeds") for s in seeds]
        if not seeds:
            raise ValueError("num_videos must be at least 1")
        if batch_size is not None and _int(batch_size, "batch_size") < 1:
            raise ValueError(f"batch_size must be positive (or None: all videos at once), got {batch_size}")
        frames, clips, plan, w = self.resolve(frames, sampler, steps, eta, guidance, condition)
        if context is not None:
            context = self.context_clips(context, len(seeds))
        size = batch_size or len(seeds)
        with self._cpu_flags():
            out = [self._generate(seeds[i:i + size], clips, plan, w, condition, clip_x0, progress,
                                  None if context is None else context[i:i + size])
                   for i in range(0, len(seeds), size)]
        return torch.cat(out)

    def context_clips(self, context: torch.Tensor, num_videos: int) -> torch.Tensor:
        """The last clip of each context video as float (N, 3, T, H, W) in [-1, 1] (see __call__);
        a ValueError for anything that is not one such video per sampled video."""
        if not self.unet.config.cond_model:
            raise ValueError("continuing a video needs a conditional UNet (cond_model=True)")
        if not isinstance(context, torch.Tensor):
            raise ValueError(f"context must be a tensor, got {type(context).__name__}")
        height, width = self.autoencoder.config.frame_size
        if context.dtype == torch.uint8 and context.dim() == 5 and context.shape[-1] == 3:
            context = context.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        elif context.is_floating_point() and context.dim() == 5 and context.shape[1] == 3:
            if not bool(torch.isfinite(context).all()) or float(context.abs().max()) > 1.0 + 1e-3:
                raise ValueError("a float context must be finite and in [-1, 1] (uint8 videos are taken as they are)")
            context = context.float().clamp(-1, 1)
        else:
            raise ValueError(f"context must be uint8 (N, T, H, W, 3) or float (N, 3, T, H, W); got {context.dtype} "
                             f"{tuple(context.shape)}")
        n, _, t, h, w = context.shape
        if n != num_videos or t < self.clip_frames or (h, w) != (height, width):
            raise ValueError(f"context holds {n} videos of {t} frames at {h}x{w}; this call needs {num_videos} "
                             f"videos of at least {self.clip_frames} frames at {height}x{width}")
        return context[:, :, t - self.clip_frames:]

    def resolve(self, frames: int | None = None, sampler: str = "ddim", steps: int | None = None,
                eta: float | None = None, guidance: float | None = None, condition: str = "reencode"):
        """Check the sampling arguments without sampling: (frames, clips, plan, guidance weight),
        defaults filled in. Raises ValueError for anything a call would refuse."""
        frames = self.clip_frames if frames is None else _int(frames, "frames")
        clips = num_clips(frames, self.clip_frames)
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
        w = float(self.diffusion.guidance if guidance is None else guidance)
        if clips > 1 and not self.unet.config.cond_model:
            raise ValueError("videos longer than one clip need a conditional UNet (cond_model=True)")
        steps = None if steps is None else _int(steps, "steps")
        return frames, clips, self.plan(sampler, steps, eta), w

    @property
    def precision(self) -> str:
        """What the models compute in: 'bf16' (autocast) or 'fp32'."""
        return "bf16" if self.amp else "fp32"

    def _cpu_flags(self):
        """On CPUs, flush denormals: values decaying towards zero make x86 arithmetic 10-50x slower."""
        if self.device.type != "cpu":
            return contextlib.nullcontext()
        from pvdm_fast.train.loop import flush_denormals

        return flush_denormals()

    def _generate(self, seeds: list[int], clips: int, plan: SamplingPlan, w: float, condition: str,
                  clip_x0: bool, progress: bool, context: torch.Tensor | None = None) -> torch.Tensor:
        noise = PerSampleNoise(seeds, self.device)
        first = None if context is None else self._encode(context.to(self.device))
        shape = (len(seeds), *self.latent_shape)

        def sample_clip(cond: torch.Tensor | None) -> torch.Tensor:
            eps_fn = self._eps_fn(len(seeds), cond, w)
            return run_plan(eps_fn, plan, shape, noise=noise, clip_x0=clip_x0, progress=progress, loop=self._loop)

        parts = iter_long_video(sample_clip, self._decode, self._encode, clips, condition, first)
        return torch.cat([to_uint8(clip) for clip in parts], dim=1)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.autoencoder.decode(latent).float()

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.autoencoder.encode(video).float()

    def _eps_fn(self, batch: int, cond: torch.Tensor | None, w: float):
        """The guided model function for this batch size. The condition goes through a fixed buffer
        and the function object is cached, so a captured CUDA graph is reused across clips."""
        has_cond = cond is not None
        if has_cond:
            buf = self._cond_bufs.get(batch)
            if buf is None:
                buf = self._cond_bufs[batch] = torch.zeros((batch, *self.latent_shape), device=self.device)
            buf.copy_(cond)
        key = (batch, has_cond, w)
        if key not in self._eps_fns:
            self._eps_fns[key] = self._make_eps_fn(self._cond_bufs[batch] if has_cond else None, w)
        return self._eps_fns[key]

    def _make_eps_fn(self, cond_buf: torch.Tensor | None, w: float):
        from pvdm_fast.diffusion.guidance import guided_eps

        net = self._net

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return guided_eps(net, x, t, cond_buf, w).float()
        return eps_fn


# ---- model files ---------------------------------------------------------------------------------

AUTOENCODER_KINDS = ("autoencoder",)
DIFFUSION_KINDS = ("diffusion", "unet")


def _int(value, name: str) -> int:
    """An integer argument: 8 and 8.0 pass, 8.7 and '8' do not (int() would silently truncate)."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # int, numpy and 0-d torch integers
        except TypeError:
            if isinstance(value, float) and value.is_integer():
                return int(value)
    raise ValueError(f"{name} must be an integer, got {value!r}")


def _section(config: dict, name: str) -> dict:
    """A file's config is either the section itself (flat) or a dict holding it under `name`."""
    inner = config.get(name)
    return dict(inner) if isinstance(inner, dict) else {k: v for k, v in config.items() if not isinstance(v, dict)}


def _build(cls, fields: dict, what: str):
    from dataclasses import fields as dc_fields

    known = {f.name for f in dc_fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{what}: unknown {cls.__name__} keys {', '.join(unknown)}")
    return cls(**fields)


def _read(path: str | os.PathLike, kinds: tuple[str, ...], what: str) -> tuple[dict, dict]:
    from pvdm_fast.models.io import load_weights

    sd, kind, config = load_weights(path)
    if kind not in kinds:
        raise ValueError(f"{path} holds a {kind!r} model, but --{what} needs one of: {', '.join(kinds)}")
    return sd, config


def load_autoencoder(path: str | os.PathLike) -> torch.nn.Module:
    """An Autoencoder from a pvdm_fast weights file (strict load)."""
    from pvdm_fast.convert import load_strict
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig

    sd, config = _read(path, AUTOENCODER_KINDS, "autoencoder")
    model = Autoencoder(_build(AutoencoderConfig, _section(config, "autoencoder"), str(path)))
    return load_strict(model, sd, str(path))


def load_diffusion(path: str | os.PathLike):
    """(TriplaneUNet, DiffusionConfig) from a pvdm_fast weights file (strict load)."""
    from pvdm_fast.convert import load_strict
    from pvdm_fast.diffusion.schedule import DiffusionConfig
    from pvdm_fast.models.unet import TriplaneUNet, UNetConfig

    sd, config = _read(path, DIFFUSION_KINDS, "diffusion")
    unet = TriplaneUNet(_build(UNetConfig, _section(config, "unet"), str(path)))
    diffusion = config.get("diffusion")
    diffusion = _build(DiffusionConfig, dict(diffusion), str(path)) if isinstance(diffusion, dict) else DiffusionConfig()
    return load_strict(unet, sd, str(path)), diffusion


def load_official(autoencoder_pth, diffusion_pth, config, overrides: Sequence[str] = ()):
    """(Autoencoder, TriplaneUNet, DiffusionConfig) from official `.pth` files and a preset/config."""
    from omegaconf import DictConfig, OmegaConf

    from pvdm_fast.configs import load_config
    from pvdm_fast.convert import autoencoder_from_official, unet_from_official
    from pvdm_fast.diffusion.schedule import DiffusionConfig
    from pvdm_fast.models.autoencoder import AutoencoderConfig
    from pvdm_fast.models.unet import UNetConfig

    cfg = config if isinstance(config, DictConfig) else load_config(str(config), list(overrides))
    sections = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("autoencoder", "unet", "diffusion")}
    ae = autoencoder_from_official(autoencoder_pth, config=_build(AutoencoderConfig, sections["autoencoder"], "config"))
    unet = unet_from_official(diffusion_pth, _build(UNetConfig, sections["unet"], "config"))
    return ae, unet, _build(DiffusionConfig, sections["diffusion"], "config")


def _alphas_cumprod(diffusion) -> torch.Tensor:
    from pvdm_fast.diffusion.schedule import NoiseSchedule

    return NoiseSchedule.from_config(diffusion).alphas_cumprod
