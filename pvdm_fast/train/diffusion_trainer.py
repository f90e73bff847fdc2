"""Stage 2: the triplane UNet on autoencoder latents, with the official joint objective.

Each step a coin (per batch as officially, from the step generator) decides whether the batch trains
conditionally: then the target is the second T frames of a 2T-frame clip and the condition the
first T frames' latent (zeroed when those frames are padding); otherwise the target is a random
T-frame window of the clip and the condition is zero. With `--latents` the examples come from the
cache, so no encoder runs in the loop: each video once per epoch, one of its pairs of windows (cur and
the window before it) with the cached window nearest the random window as unconditional target
(data/latent_pairs.py; window starts are limited to the offsets `pvdm encode` cached). AdamW with a
linear warm-up that is applied (the official config names one but never applies it), EMA as officially
by default: every 25 steps, decay 0.9999 with LitEma's warm-up (see train/ema.py).
"""

from __future__ import annotations

import copy
import os
import pathlib
from dataclasses import asdict

import torch

from pvdm_fast.train.checkpoint import Weights
from pvdm_fast.train.loop import Trainer, adamw, rows_of_rank


def warmup_factor(warmup_steps: int):
    """lr multiplier of optimizer step s (0-based): (s + 1) / warmup_steps, then 1."""
    if warmup_steps <= 0:
        return lambda s: 1.0
    return lambda s: min(1.0, (s + 1) / warmup_steps)


def resolve_autoencoder_file(path: str | os.PathLike) -> pathlib.Path:
    """A weights file, or a stage-1 run folder (its exported autoencoder.safetensors)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "autoencoder.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no autoencoder weights at {path}; pass the autoencoder.safetensors written by "
                                "`pvdm train-autoencoder` (or `pvdm convert`)")
    return path


class DiffusionTrainer(Trainer):
    section_name = "train_diffusion"
    description = "diffusion"

    def __init__(self, cfg, run_dir, *, autoencoder: str | os.PathLike, data: str | None = None,
                 latents: str | os.PathLike | None = None, **kwargs):
        if (data is None) == (latents is None):
            raise ValueError("train-diffusion needs exactly one of --data FORMAT:PATH or --latents CACHE_DIR")
        from pvdm_fast.data.latents import file_sha256

        self.ae_path = resolve_autoencoder_file(autoencoder)
        super().__init__(cfg, run_dir, run_info={"autoencoder": str(self.ae_path), "data": data,
                                                 "latents": None if latents is None else str(latents),
                                                 "autoencoder_sha256": file_sha256(self.ae_path)}, **kwargs)
        self.data_spec, self.latents_dir = data, latents

    def build(self) -> None:
        from omegaconf import OmegaConf

        from pvdm_fast.diffusion.schedule import DiffusionConfig, NoiseSchedule
        from pvdm_fast.models.unet import TriplaneUNet, UNetConfig, check_latents_match
        from pvdm_fast.pipeline import load_autoencoder

        tc, dev = self.tc, self.ctx.device
        unet_fields = OmegaConf.to_container(self.cfg.unet, resolve=True)
        if tc.activation_checkpointing:
            unet_fields["checkpoint"] = True
        self.unet_config = UNetConfig(**unet_fields)
        self.unet_config.validate()
        self.diffusion_config = DiffusionConfig(**OmegaConf.to_container(self.cfg.diffusion, resolve=True))
        self.schedule = NoiseSchedule.from_config(self.diffusion_config).to(dev)
        self.cond_prob = self.diffusion_config.cond_prob if tc.cond_prob is None else tc.cond_prob
        self.autoencoder = load_autoencoder(self.ae_path).to(dev).eval().requires_grad_(False)
        e = int(self.autoencoder.config.embed_dim)
        check_latents_match(self.autoencoder.config, self.unet_config,
                            f"{self.ae_path}: use the config it was trained with (unet.in_channels={e} "
                            f"unet.out_channels={e} for its channels)")
        self.model = TriplaneUNet(self.unet_config).to(dev)
        self.unet = self.wrap(self.model)
        self.unet_fwd = self.maybe_compile(self.unet)
        opt = adamw(self.model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_factor(tc.warmup_steps))
        self.part = self.make_part("unet", self.unet, opt, tc.max_grad_norm, sched)
        if tc.ema_decay > 0 and self.ctx.is_main:
            from pvdm_fast.train.ema import EMA

            self.ema = EMA(self.model, tc.ema_decay, tc.ema_every, tc.ema_warmup)

    def ema_module(self):
        return self.model

    def dataset(self):
        if self.latents_dir is not None:
            from pvdm_fast.data.latents import LatentDataset, file_sha256

            data = LatentDataset(self.latents_dir, autoencoder_id=file_sha256(self.ae_path), seed=self.tc.data_seed)
            expected = (int(self.unet_config.in_channels), int(self.unet_config.latent_length))
            if tuple(data.latent_shape) != expected:
                raise ValueError(f"latents in {self.latents_dir} have shape {data.latent_shape}, the unet expects "
                                 f"{expected}")
            self._check_cache_data(data.manifest.get("data") or {})
            return data
        from pvdm_fast.data.dataset import open_dataset

        d = self.cfg.data
        return open_dataset(self.data_spec, resolution=d.resolution, frames=d.frames, stride=d.frame_stride,
                            split=d.get("split"), fold=d.get("fold", 1), antialias=d.get("antialias", True),
                            cond=True, mode="train", seed=self.tc.data_seed)

    def _check_cache_data(self, cached: dict) -> None:
        """The clips a latent cache was cut with (stride, resolution, frames, antialias) must be the run's data.*:
        the same latent grid with another stride trains a model of a different frame rate."""
        d = self.cfg.data
        for cache_key, key in (("stride", "frame_stride"), ("resolution", "resolution"), ("frames", "frames"),
                               ("antialias", "antialias")):
            if cache_key not in cached:
                continue
            have, want = cached[cache_key], d.get(key)
            if isinstance(have, (list, tuple)) and len(set(have)) == 1:  # (size, size): a square clip
                have = have[0]
            if want is not None and have != want:
                raise ValueError(f"latent cache {self.latents_dir} was encoded with {cache_key} {have}, but this "
                                 f"run's data.{key} is {want}; encode the clips again with `pvdm encode` for this "
                                 f"config, or train with data.{key}={have}")

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.autoencoder.encode(video).float()

    def latents_of(self, batch: dict, conditioned: torch.Tensor, prefix: torch.Tensor):
        """(x, cond, cond_valid) latents of a micro-batch; `conditioned`/`prefix` are this rank's rows."""
        if "latent" in batch:  # a latent cache: the coin and prefix pick among the cached windows
            from pvdm_fast.data.latent_pairs import cache_targets

            return cache_targets(batch, conditioned, prefix, int(self.unet_config.frames))
        video, valid = batch["video"], batch["cond_valid"].to(self.ctx.device)
        frames = video.shape[2] // 2
        cond_on = conditioned.to(self.ctx.device) & valid
        # Conditional: the last T frames; unconditional: a random window; padded clips: the real half.
        start = torch.where(cond_on | ~valid, torch.full_like(prefix, frames), prefix.to(self.ctx.device))
        idx = start.view(-1, 1) + torch.arange(frames, device=self.ctx.device)
        x_video = torch.take_along_dim(video, idx.view(-1, 1, frames, 1, 1), dim=2)
        x = self.encode(x_video)
        cond = self.encode(video[:, :, :frames]) if bool(cond_on.any()) else torch.zeros_like(x)
        return x, cond, valid

    def train_step(self, batches: list[dict]) -> dict[str, float]:
        from pvdm_fast.diffusion.losses import diffusion_loss, draw_conditioned, joint_loss

        tc, B = self.tc, self.tc.batch_size
        shape = (int(self.unet_config.in_channels), int(self.unet_config.latent_length))
        frames = int(self.unet_config.frames)

        def loss_fn(batch, i):
            gen = self.generator(i)
            conditioned = rows_of_rank(self.ctx, draw_conditioned(B, self.cond_prob, generator=gen))
            if not self.unet_config.cond_model:  # an unconditional UNet: every batch is a random window alone
                conditioned = torch.zeros_like(conditioned)
            prefix = rows_of_rank(self.ctx, torch.randint(0, frames + 1, (B,), generator=gen))
            t = rows_of_rank(self.ctx, torch.randint(0, self.schedule.num_timesteps, (B,), generator=gen))
            noise = rows_of_rank(self.ctx, torch.randn((B, *shape), generator=gen))
            x, cond, valid = self.latents_of(batch, conditioned, prefix)
            if not self.unet_config.cond_model:
                value, _ = diffusion_loss(self.unet_fwd, self.schedule, x, None, loss=self.diffusion_config.loss,
                                          t=t.to(x.device), noise=noise.to(x.device))
                return value, {"conditioned": torch.zeros((), device=value.device)}
            out = joint_loss(self.unet_fwd, self.schedule, x, cond, valid, conditioned=conditioned,
                             loss=self.diffusion_config.loss, t=t.to(x.device), noise=noise.to(x.device))
            return out.loss, {"conditioned": out.conditioned.float().mean()}

        metrics = self.accumulate(self.part, batches, loss_fn)
        self.update(self.part, metrics)
        return metrics

    def _file_config(self) -> dict:
        """The model and the clips it was trained on (`pvdm sample --context` cuts real clips the same way)."""
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(self.cfg.data, resolve=True)
        return {"unet": asdict(self.unet_config), "diffusion": asdict(self.diffusion_config),
                "data": {k: d[k] for k in ("resolution", "frames", "frame_stride", "antialias") if k in d}}

    def weights(self) -> dict[str, Weights]:
        out = {"unet": Weights(self.model.state_dict(), "diffusion", self._file_config())}
        if self.ema is not None:
            out[self.EMA_WEIGHTS] = Weights(self.ema.state_dict(), "diffusion", self._file_config())
        return out

    def restore(self) -> None:
        """A run continues only on the latents of the autoencoder it was trained on (run.json records the
        file's SHA-256 since this check exists): another one is another latent space."""
        import json

        from pvdm_fast.train.loop import RUN_INFO

        path = self.run_dir / RUN_INFO
        saved = json.loads(path.read_text()) if path.is_file() else {}
        was, now = saved.get("autoencoder_sha256"), self.run_info["autoencoder_sha256"]
        if was and was != now:
            raise ValueError(f"{self.run_dir} was trained on the latents of the autoencoder {saved.get('autoencoder')} "
                             f"(SHA-256 {was[:16]}...), and {self.ae_path} is another file ({now[:16]}...): a UNet "
                             "cannot continue in another latent space; pass the run's autoencoder, or start a new run")
        super().restore()

    def load_weights(self, checkpoint) -> None:
        self._load_state(self.model, checkpoint.weights("unet", self.ctx.device)[0], "the unet")
        if self.ema is not None:
            if self.EMA_WEIGHTS in checkpoint.manifest["weights"]:
                self.ema.load_state_dict(checkpoint.weights(self.EMA_WEIGHTS, self.ctx.device)[0])
            else:
                self.ema.load_state_dict(self.model.state_dict())

    def averaged_unet(self) -> torch.nn.Module:
        """A copy of the UNet holding the EMA weights (or the raw weights when EMA is off)."""
        net = copy.deepcopy(self.model).eval()
        if self.ema is not None:
            self.ema.copy_to(net)
        return net

    @torch.no_grad()
    def sample(self) -> None:
        from pvdm_fast.pipeline import Pipeline
        from pvdm_fast.train.media import save_gif, video_grid_frames

        pipe = Pipeline(self.autoencoder, self.averaged_unet(), self.diffusion_config, device=self.ctx.device)
        videos = pipe(self.tc.sample_count, sampler="ddim", steps=min(self.tc.sample_steps,
                                                                      self.schedule.num_timesteps), seed=0)
        self.autoencoder.requires_grad_(False)
        video = videos.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        save_gif(self.run_dir / "samples" / f"samples-{self.step:08d}.gif", video_grid_frames([video]))
        self.logger.add_video("samples", video, self.step * self.clips_per_step)

    # ---- held-out evaluation (eval_every) ---------------------------------------------------
    def prepare_eval(self) -> None:
        from pvdm_fast.train.evaluation import load_fvd_network

        frames = int(self.autoencoder.config.frames)  # one clip: the real side is cut at the sample length
        self._eval_clips = self.eval_clips(frames)
        self._eval_clips.check()
        self._eval_extract, self._eval_net = load_fvd_network(self.tc.eval_i3d, self.ctx.device, frames)
        self._eval_real = None  # (mean, cov), once computed or read from the run folder

    def _real_eval_stats(self):
        from pvdm_fast.metrics.features import accumulate
        from pvdm_fast.train.evaluation import REAL_STATS, cached_real_stats

        if self._eval_real is None:
            clips = self._eval_clips
            self._eval_real = cached_real_stats(
                self.run_dir / REAL_STATS, clips.protocol(self._eval_net),
                lambda: accumulate(clips.batches(as_uint8=True), self._eval_extract, keep_features=False), self.ctx)
        return self._eval_real

    def evaluate(self) -> dict[str, float]:
        """FVD of eval_videos samples of the exported (EMA) weights, one clip each from seeds eval_seed + i,
        made as `pvdm sample` makes them (Pipeline, eval_sampler, eval_steps), against as many held-out
        real clips (their statistics computed once, kept in the run folder's eval/real_stats.npz)."""
        from pvdm_fast.metrics.features import accumulate
        from pvdm_fast.pipeline import Pipeline
        from pvdm_fast.train.evaluation import frechet

        mean, cov = self._real_eval_stats()
        tc = self.tc
        pipe = Pipeline(self.autoencoder, self.eval_copy(self.model), self.diffusion_config, device=self.ctx.device)
        steps = min(tc.eval_steps, self.schedule.num_timesteps)
        seeds = list(range(tc.eval_seed, tc.eval_seed + tc.eval_videos))[self.ctx.rank::self.ctx.world_size]
        size = self.local_batch

        def batches():
            for i in range(0, len(seeds), size):
                yield pipe(seeds=seeds[i:i + size], sampler=tc.eval_sampler, steps=steps).numpy()

        fake = accumulate(batches(), self._eval_extract, keep_features=False)
        return {"eval/fvd": frechet(mean, cov, fake)}

    def export(self) -> list[pathlib.Path]:
        from pvdm_fast.models.io import save_weights

        path = self.run_dir / "diffusion.safetensors"
        state = self.exported_state(self.model)
        save_weights(path, state, "diffusion", self._file_config())
        return [path]
