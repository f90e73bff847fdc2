"""The `train_autoencoder` and `train_diffusion` config sections.

Defaults follow the official recipe (PVDM_SPEC.md) where it has one; a preset YAML or `key=value`
overrides change them. Durations are counted in clips (`total_clips`), periodic work in optimizer
steps (one step = batch_size * grad_accum clips, summed over all ranks).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
LR_DECAYS = ("none", "linear", "cosine")
EVAL_SAMPLERS = ("ddim", "ddpm", "dpm++2m")  # pvdm_fast.diffusion.samplers.SAMPLERS (not imported: config stays light)


@dataclass
class _Common:
    seed: int = 0
    batch_size: int = 8                 # clips per micro-step, over all ranks together
    grad_accum: int = 1
    total_clips: int = 1_000_000
    lr: float = 1e-4
    warmup_steps: int = 0               # linear warm-up from 0 to lr over this many optimizer updates
    lr_decay: str = "none"              # none | linear | cosine: from lr (after the warm-up) to min_lr_ratio * lr
    min_lr_ratio: float = 0.0           #   at the last update; "none" keeps lr constant, as officially
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01          # torch's AdamW default, which the official trainers use
    max_grad_norm: float = 0.0          # 0: no clipping
    precision: str = "auto"             # auto: bf16 autocast on GPUs, fp32 on CPUs
    activation_checkpointing: bool = False
    compile: bool = False
    skip_nonfinite: bool = False        # False: a NaN/Inf loss stops the run, leaving the last checkpoint
    ema_decay: float = 0.0              # 0: no EMA copy
    ema_every: int = 1
    ema_warmup: bool = True             # LitEma's decay min(ema_decay, (1+k)/(10+k)) at update k, as officially
    log_every: int = 10
    checkpoint_every: int = 1000
    sample_every: int = 0               # 0: no periodic samples / reconstructions
    keep_checkpoints: int = 2
    num_workers: int = -1               # -1: min(8, cores)
    device: str = "auto"
    tensorboard: bool = True
    data_seed: int = 0
    # Held-out evaluation every eval_every optimizer steps (and once at the last step), logged as eval/* in
    # metrics.jsonl and TensorBoard. It never touches the training RNG streams or data order: a run with it
    # trains the same weights as without. Autoencoder: PSNR and SSIM of the exported weights' (EMA when
    # there is one) reconstructions, LPIPS with lpips_weights, reconstruction FVD (eval/rfvd) with eval_i3d.
    # Diffusion: FVD (eval/fvd) of eval_videos EMA samples against as many real clips (needs eval_i3d).
    eval_every: int = 0                 # 0: off
    eval_videos: int = 64               # held-out clips (and, diffusion, samples) per evaluation, over all ranks
    eval_data: Optional[str] = None     # FORMAT:PATH of the held-out clips; None / empty: the training --data
    eval_split: Optional[str] = None    # e.g. test; None: data.split (the training data's split)
    eval_i3d: Optional[str] = None      # I3D weights file, as `pvdm eval fvd --i3d` takes; None: no FVD
    eval_seed: int = 0                  # which clips (seeded permutation and start) and, diffusion, sample seeds


@dataclass
class TrainAutoencoderConfig(_Common):
    batch_size: int = 8
    grad_accum: int = 3
    betas: tuple[float, float] = (0.5, 0.9)
    l1_weight: float = 4.0
    l2_weight: float = 0.0               # mean squared error term (0 as official; what PSNR measures)
    lpips_weight: float = 4.0
    lpips_weights: Optional[str] = None  # file with VGG16 + LPIPS linear heads; None: perceptual term off
    gan_start_step: int = -1            # optimizer step at which the GAN stage begins; -1: never
    gan_weight: float = 1.0
    gan_alternate: bool = True          # official: from gan_start_step, autoencoder and discriminator steps
                                        #   alternate (each on its own batches); false: both every step
    feature_matching_weight: float = 4.0
    disc_channels: int = 64
    disc_layers: int = 3
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.5, 0.9)
    disc_max_grad_norm: float = 1.0


@dataclass
class TrainDiffusionConfig(_Common):
    batch_size: int = 64
    warmup_steps: int = 10000           # linear warm-up from 0 to lr; 0 reproduces the official constant rate
    ema_decay: float = 0.9999
    ema_every: int = 25
    cond_prob: Optional[float] = None   # None: take diffusion.cond_prob
    sample_steps: int = 100             # DDIM steps of the periodic samples
    sample_count: int = 4
    eval_sampler: str = "ddim"          # sampler of the eval/fvd samples (ddim with eta 1, ddpm or dpm++2m), as
    eval_steps: int = 100               #   `pvdm sample --sampler --steps` makes them (capped at the timesteps)


SECTIONS = {"train_autoencoder": TrainAutoencoderConfig, "train_diffusion": TrainDiffusionConfig}


def section(cfg, name: str):
    """The dataclass of section `name` of an OmegaConf config (missing keys take defaults; an unknown
    key is a ValueError naming the allowed ones)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cls = SECTIONS[name]
    given = cfg.get(name) if cfg is not None else None
    given = OmegaConf.to_container(given, resolve=True) if given is not None else {}
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} in section {name}; allowed: {', '.join(sorted(allowed))}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), given)
        out = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ValueError(f"bad value in section {name}: {exc}") from None
    validate(out, name)
    return out


def check_sections(cfg) -> None:
    """Both stages' train sections, where the config has them: a bad value for the other stage (e.g.
    `train_diffusion.lr=abc` in an autoencoder run) is refused too, not carried along unseen."""
    for name in SECTIONS:
        if cfg is not None and cfg.get(name) is not None:
            section(cfg, name)


def validate(c, name: str) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{name}.{what}")

    need(c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}")
    need(1 <= c.grad_accum <= 64, f"grad_accum must be in [1, 64], got {c.grad_accum}")
    need(c.total_clips >= 1, f"total_clips must be >= 1, got {c.total_clips}")
    need(c.lr > 0, f"lr must be > 0, got {c.lr}")
    need(c.warmup_steps >= 0, f"warmup_steps must be >= 0, got {c.warmup_steps}")
    need(c.lr_decay in LR_DECAYS, f"lr_decay must be one of {LR_DECAYS}, got {c.lr_decay!r}")
    need(0.0 <= c.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {c.min_lr_ratio}")
    need(c.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {c.precision!r}")
    need(0.0 <= c.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {c.ema_decay}")
    need(c.ema_every >= 1, f"ema_every must be >= 1, got {c.ema_every}")
    need(c.log_every >= 1 and c.checkpoint_every >= 1, "log_every and checkpoint_every must be >= 1")
    need(c.sample_every >= 0, f"sample_every must be >= 0 (0: no periodic samples), got {c.sample_every}")
    need(c.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1 (the newest N are kept), got {c.keep_checkpoints}")
    need(c.eval_every >= 0, f"eval_every must be >= 0 (0: no held-out evaluation), got {c.eval_every}")
    need(c.eval_videos >= 1, f"eval_videos must be >= 1, got {c.eval_videos}")
    if c.eval_every and c.eval_i3d:
        need(c.eval_videos >= 2, f"eval_videos must be >= 2 for an FVD (it fits a covariance), got {c.eval_videos}")
    if isinstance(c, TrainAutoencoderConfig):
        need(c.l1_weight >= 0 and c.l2_weight >= 0 and c.l1_weight + c.l2_weight > 0,
             f"l1_weight and l2_weight must be >= 0 and not both 0, got {c.l1_weight} and {c.l2_weight}")
    if isinstance(c, TrainDiffusionConfig):
        need(c.cond_prob is None or 0.0 <= c.cond_prob <= 1.0, f"cond_prob must be in [0, 1], got {c.cond_prob}")
        need(c.eval_sampler in EVAL_SAMPLERS, f"eval_sampler must be one of {EVAL_SAMPLERS}, got {c.eval_sampler!r}")
        need(c.eval_steps >= 1, f"eval_steps must be >= 1, got {c.eval_steps}")
        need(not c.eval_every or bool(c.eval_i3d),
             f"eval_every={c.eval_every} needs eval_i3d=PATH (the I3D weights `pvdm eval fvd --i3d` takes): the "
             "diffusion stage's evaluation is an FVD of samples; or set eval_every=0")


def split_overrides(overrides, section_name: str) -> list[str]:
    """CLI `key=value` words: a bare key (`lr=2e-4`) belongs to the stage's train section, a dotted one
    (`unet.model_channels=64`) is passed on as is."""
    out = []
    for word in overrides:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"override {word!r} is not key=value")
        out.append(word if "." in key else f"{section_name}.{key}={value}")
    return out
