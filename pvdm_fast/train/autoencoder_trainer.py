"""Stage 1: the autoencoder, with the official recipe as one run.

Reconstruction: 4 * L1 over the clip + 4 * LPIPS on one random frame per clip (LPIPS needs a user
weights file; without one the perceptual term is off, with a warning, and nothing is downloaded).
From `gan_start_step` on, the GAN stage adds the hinge generator loss (weight 1) of a 2D PatchGAN on
that same frame and a 3D PatchGAN on the whole clip, plus feature matching (L1 between the
discriminators' intermediate activations on the real and reconstructed input, summed over layers,
weight 4), and the discriminators take hinge-loss steps with each one's gradients clipped to norm 1;
as officially, the two alternate step by step (gan_alternate=false updates both every step).
Before that step they are neither run nor updated. The discriminators start from the official
initialisation (see models/discriminators.py).
"""

from __future__ import annotations

import pathlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from pvdm_fast.models.discriminators import DiscriminatorConfig, PatchDiscriminator, sync_batchnorm
from pvdm_fast.train.checkpoint import Weights
from pvdm_fast.train.loop import Trainer, adamw, rows_of_rank


class DiscriminatorPair(nn.Module):
    """The 2D (frame) and 3D (clip) PatchGANs as one module: one optimizer, one DDP wrapper."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.frame = PatchDiscriminator(config, 2)
        self.clip = PatchDiscriminator(config, 3)

    def forward(self, real_frames, real_clips, fake_frames, fake_clips) -> list[torch.Tensor]:
        """Logits [real frame, real clip, fake frame, fake clip]. Real and fake go through in separate
        calls (BatchNorm statistics per kind, as officially) but in one DDP forward."""
        return [self.frame(real_frames)[0], self.clip(real_clips)[0],
                self.frame(fake_frames)[0], self.clip(fake_clips)[0]]


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def feature_matching(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """L1 between intermediate activations, summed over the layers (as officially, not averaged)."""
    return sum(F.l1_loss(f, r.detach()) for f, r in zip(fake, real))


def pick_frames(video: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W), (B,) -> (B, C, H, W): frame index[b] of clip b."""
    return video[torch.arange(video.shape[0], device=video.device), :, index.to(video.device)]


def load_lpips(path: str | None, device: torch.device) -> nn.Module | None:
    if not path:
        warnings.warn("no lpips_weights file given: training the autoencoder without the LPIPS perceptual "
                      "term (pass lpips_weights=PATH to a file with the VGG16 and LPIPS linear-head weights)",
                      RuntimeWarning, stacklevel=3)
        return None
    from pvdm_fast.models.lpips import LPIPS

    model = LPIPS.from_file(path)
    return model.to(device).eval().requires_grad_(False)


class AutoencoderTrainer(Trainer):
    section_name = "train_autoencoder"
    EMA_WEIGHTS = "autoencoder_ema"
    description = "autoencoder"

    def __init__(self, cfg, run_dir, *, data: str, **kwargs):
        super().__init__(cfg, run_dir, run_info={"data": str(data)}, **kwargs)
        self.data_spec = data

    def build(self) -> None:
        from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
        from omegaconf import OmegaConf

        tc, dev = self.tc, self.ctx.device
        ae_fields = OmegaConf.to_container(self.cfg.autoencoder, resolve=True)
        if tc.activation_checkpointing:
            ae_fields["checkpoint"] = True
        self.ae_config = AutoencoderConfig(**ae_fields)
        self.model = Autoencoder(self.ae_config).to(dev)
        self.ae = self.wrap(self.model)
        self.ae_fwd = self.maybe_compile(self.ae)
        opt = adamw(self.model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
        self.g = self.make_part("ae", self.ae, opt, tc.max_grad_norm)

        disc = DiscriminatorPair(DiscriminatorConfig(self.ae_config.in_channels, tc.disc_channels, tc.disc_layers))
        if self.ctx.distributed and dev.type == "cuda":
            disc = sync_batchnorm(disc)
        self.disc = disc.to(dev)
        self.disc_ddp = self.wrap(self.disc)
        d_opt = adamw(self.disc.parameters(), lr=tc.disc_lr, betas=tuple(tc.disc_betas), weight_decay=tc.weight_decay)
        self.d = self.make_part("disc", self.disc_ddp, d_opt, tc.disc_max_grad_norm)
        # as officially, each discriminator's gradient is clipped on its own (the 3D one's is usually
        # far larger: a joint norm would shrink the frame discriminator's step with it)
        self.d.clip_groups = {"frame": list(self.disc.frame.parameters()), "clip": list(self.disc.clip.parameters())}
        self.lpips = load_lpips(tc.lpips_weights, dev) if tc.lpips_weight > 0 else None
        if tc.ema_decay > 0 and self.ctx.is_main:
            from pvdm_fast.train.ema import EMA

            self.ema = EMA(self.model, tc.ema_decay, tc.ema_every, tc.ema_warmup)
        self._preview = None
        self._latest: dict[str, float] = {}  # each part's last metrics (the GAN stage alternates them)
        self._disc_turn = False

    def ema_module(self):
        return self.model

    def dataset(self):
        from pvdm_fast.data.dataset import open_dataset

        d = self.cfg.data
        return open_dataset(self.data_spec, resolution=d.resolution, frames=d.frames, stride=d.frame_stride,
                            split=d.get("split"), fold=d.get("fold", 1), antialias=d.get("antialias", True),
                            mode="train", seed=self.tc.data_seed)

    @property
    def gan_active(self) -> bool:
        return 0 <= self.tc.gan_start_step <= self.step

    def part_updates(self, name: str) -> int:
        """Alternating, the GAN stage's steps are shared: the autoencoder updates on even ones from
        gan_start_step on, the discriminators on odd ones (and on every one with gan_alternate=false)."""
        total, start = self.total_steps, self.tc.gan_start_step
        gan_steps = total - start if 0 <= start < total else 0
        disc = gan_steps // 2 if self.tc.gan_alternate else gan_steps
        if name == "disc":
            return disc
        return total - disc if self.tc.gan_alternate else total

    def ema_due(self) -> bool:
        return not self._disc_turn

    def train_step(self, batches: list[dict]) -> dict[str, float]:
        tc = self.tc
        frames_per_clip = batches[0]["video"].shape[2]
        picks = [rows_of_rank(self.ctx, torch.randint(frames_per_clip, (tc.batch_size,), generator=self.generator(i)))
                 for i in range(len(batches))]
        gan = self.gan_active
        fakes: list[torch.Tensor] = []

        def generator_loss(batch, i):
            video = batch["video"]
            recon = self.ae_fwd(video)
            frame_real, frame_fake = pick_frames(video, picks[i]), pick_frames(recon, picks[i])
            err = recon.float() - video.float()
            l1 = err.abs().mean()
            metrics = {"l1": l1}
            loss = tc.l1_weight * l1
            if tc.l2_weight:
                l2 = err.square().mean()
                loss = loss + tc.l2_weight * l2
                metrics["l2"] = l2
            if self.lpips is not None:
                p = self.lpips(frame_fake.float(), frame_real.float()).mean()
                loss = loss + tc.lpips_weight * p
                metrics["lpips"] = p
            if gan:
                fakes.append(recon.detach())
                # The generator step differentiates through the discriminators without touching their
                # gradients or their DDP hooks: call the raw module with its parameters frozen.
                self.disc.requires_grad_(False)
                logit_f, feat_f = self.disc.frame(frame_fake)
                logit_c, feat_c = self.disc.clip(recon)
                with torch.no_grad():
                    real_f, real_c = self.disc.frame(frame_real)[1], self.disc.clip(video)[1]
                self.disc.requires_grad_(True)
                adv = -(logit_f.float().mean() + logit_c.float().mean())
                fm = feature_matching(feat_f, real_f) + feature_matching(feat_c, real_c)
                loss = loss + tc.gan_weight * adv + tc.feature_matching_weight * fm
                metrics.update({"g_adv": adv, "feature_matching": fm})
            return loss, metrics

        # Officially the GAN stage alternates optimizer steps: the autoencoder's, then the discriminators'
        # on the next batches and on reconstructions by the updated autoencoder (gan_alternate=false:
        # both every step, on the same batch).
        disc_turn = self._disc_turn = gan and tc.gan_alternate and (self.step - tc.gan_start_step) % 2 == 1
        metrics: dict[str, float] = {}
        if disc_turn:
            with torch.no_grad(), self.autocast():
                fakes = [self.ae_fwd(batch["video"]) for batch in batches]
        else:
            metrics = self.accumulate(self.g, batches, generator_loss)
            self.update(self.g, metrics)
        if gan and (disc_turn or not tc.gan_alternate):
            def disc_loss(batch, i):
                video, fake = batch["video"], fakes[i]
                r_f, r_c, f_f, f_c = self.disc_ddp(pick_frames(video, picks[i]), video,
                                                   pick_frames(fake, picks[i]), fake)
                loss_f, loss_c = hinge_d_loss(r_f.float(), f_f.float()), hinge_d_loss(r_c.float(), f_c.float())
                return loss_f + loss_c, {"frame": loss_f, "clip": loss_c}

            d_metrics = self.accumulate(self.d, batches, disc_loss)
            self.update(self.d, d_metrics)
            metrics.update(d_metrics)
        if self._preview is None and self.ctx.is_main:
            self._preview = batches[0]["video"][:4].detach().clone()
        # Every step reports both parts' latest metrics: alternating, a log every even number of steps
        # would otherwise only ever see one of them.
        self._latest.update(metrics)
        return dict(self._latest)

    def _file_config(self) -> dict:
        """The config an autoencoder file carries: the model, and the data settings it was trained on
        (so `pvdm encode` / `pvdm eval recon` cut clips with the same frame stride by default)."""
        from dataclasses import asdict

        from omegaconf import OmegaConf

        d = OmegaConf.to_container(self.cfg.data, resolve=True)
        return {"autoencoder": asdict(self.ae_config),
                "data": {k: d[k] for k in ("resolution", "frames", "frame_stride", "antialias") if k in d}}

    def weights(self) -> dict[str, Weights]:
        out = {"autoencoder": Weights(self.model.state_dict(), "autoencoder", self._file_config()),
               "discriminators": Weights(self.disc.state_dict(), "discriminators",
                                         {"channels": self.tc.disc_channels, "layers": self.tc.disc_layers})}
        if self.ema is not None:
            out[self.EMA_WEIGHTS] = Weights(self.ema.state_dict(), "autoencoder", self._file_config())
        return out

    def load_weights(self, checkpoint) -> None:
        self._load_state(self.model, checkpoint.weights("autoencoder", self.ctx.device)[0], "the autoencoder")
        self._load_state(self.disc, checkpoint.weights("discriminators", self.ctx.device)[0], "the discriminators")
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint.weights(self.EMA_WEIGHTS, self.ctx.device)[0])

    @torch.no_grad()
    def sample(self) -> None:
        if self._preview is None:
            return
        from pvdm_fast.train.media import save_video_grid

        self.model.eval()
        with self.autocast():
            recon = self.model(self._preview)
        self.model.train()
        path = self.run_dir / "samples" / f"reconstructions-{self.step:08d}.png"
        save_video_grid(path, [self._preview, recon.float().clamp(-1, 1)])
        self.logger.add_video("reconstructions", torch.cat([self._preview, recon.float()], dim=-1),
                               self.step * self.clips_per_step)

    # ---- held-out evaluation (eval_every) ---------------------------------------------------
    def prepare_eval(self) -> None:
        from pvdm_fast.train.evaluation import load_fvd_network

        self._eval_clips = self.eval_clips(self.ae_config.frames)
        self._eval_clips.check()
        # LPIPS as the loss has it; loaded for the evaluation alone when the loss does not use it
        self._eval_lpips = self.lpips
        if self._eval_lpips is None and self.tc.lpips_weights:
            self._eval_lpips = load_lpips(self.tc.lpips_weights, self.ctx.device)
        self._eval_extract = None
        if self.tc.eval_i3d:
            self._eval_extract, _ = load_fvd_network(self.tc.eval_i3d, self.ctx.device, self.ae_config.frames)

    def evaluate(self) -> dict[str, float]:
        """PSNR / SSIM (/ LPIPS) of the exported weights' reconstructions of the held-out clips, as
        `pvdm eval recon` scores them (fp32, metrics.recon), and with eval_i3d the reconstruction FVD: I3D
        features of the reconstructions against those of the same clips."""
        from pvdm_fast.metrics.recon import evaluate_reconstruction
        from pvdm_fast.metrics.stats import FeatureStats
        from pvdm_fast.train.evaluation import frechet, gather_stats, quantise_generated, quantise_real

        net = self.eval_copy(self.model)
        extract = self._eval_extract
        real, fake = FeatureStats(keep_features=False), FeatureStats(keep_features=False)

        def reconstruct(video: torch.Tensor) -> torch.Tensor:
            recon = net(video)
            if extract is not None:
                real.update(extract(quantise_real(video)))
                fake.update(extract(quantise_generated(recon)))
            return recon

        scores = evaluate_reconstruction(reconstruct, self._eval_clips.batches(as_uint8=False), self._eval_lpips,
                                         device=self.ctx.device)
        results = {"eval/psnr": scores["psnr"], "eval/ssim": scores["ssim"]}
        if "lpips" in scores:
            results["eval/lpips"] = scores["lpips"]
        if extract is not None:
            real, fake = gather_stats(real), gather_stats(fake)
            results["eval/rfvd"] = frechet(real.mean, real.cov, fake)
        return results

    def export(self) -> list[pathlib.Path]:
        from pvdm_fast.models.io import save_weights

        path = self.run_dir / "autoencoder.safetensors"
        state = self.exported_state(self.model)
        save_weights(path, state, "autoencoder", self._file_config())
        return [path]
