"""`pvdm demo`: the whole method end to end on procedural videos, in minutes on a CPU.

Trains a tiny autoencoder, caches its latents, trains a tiny diffusion model on them, samples long
videos clip by clip, and writes what a user wants to look at: samples (GIF, MP4), reconstructions of
held-out clips, loss curves, the two model files (which `pvdm sample` takes) and metrics.json with
numbers that would expose a broken stage (reconstruction PSNR; Fréchet distances of samples, of
held-out real clips and of noise to the training clips in a fixed feature space).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time

import torch

# Train-section settings used when the demo preset does not set them; `quick` shortens both stages.
DEMO_TRAIN = {
    # The tiny autoencoder learns the temporal planes slowly: many small steps at a high, decaying rate,
    # and a squared-error term (with L1 alone it erases the small moving objects: ~19 dB instead of ~22).
    "train_autoencoder": {"batch_size": 4, "grad_accum": 1, "total_clips": 14400, "lr": 4e-3, "betas": [0.9, 0.99],
                          "warmup_steps": 50, "lr_decay": "cosine", "l1_weight": 0.0, "l2_weight": 4.0,
                          "lpips_weight": 0.0, "gan_start_step": -1, "log_every": 10, "checkpoint_every": 10**9,
                          "num_workers": 0, "tensorboard": False},
    "train_diffusion": {"batch_size": 32, "grad_accum": 1, "total_clips": 4800, "lr": 1e-3, "warmup_steps": 50,
                        "ema_decay": 0.99, "ema_every": 1, "log_every": 10, "checkpoint_every": 10**9,
                        "num_workers": 0, "tensorboard": False, "sample_steps": 40},
}
QUICK_SCALE = {"train_autoencoder": 0.06, "train_diffusion": 0.15}  # --quick: fractions of total_clips
TRAIN_VIDEOS = 64
HELDOUT_VIDEOS = 16
HELDOUT_SEED = 1_000_003
SAMPLE_VIDEOS = 4
SAMPLE_CLIPS = 4


def demo_config(quick: bool, device: str):
    from omegaconf import OmegaConf

    from pvdm_fast.configs import PRESET_DIR, load_config

    # By path: a folder named "demo" in the working directory (the default --out) shadows the name.
    preset = load_config(str(PRESET_DIR / "demo.yaml"))
    cfg = OmegaConf.merge(OmegaConf.create(DEMO_TRAIN), preset)
    for name in DEMO_TRAIN:
        cfg[name].device = device
        if quick:
            cfg[name].total_clips = max(cfg[name].batch_size, int(cfg[name].total_clips * QUICK_SCALE[name]))
    if quick:
        cfg.train_diffusion.sample_steps = min(int(cfg.train_diffusion.sample_steps), 10)
    return cfg


def _fresh(path: pathlib.Path) -> pathlib.Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def run_demo(out: str, *, device: str = "auto", quick: bool = False, progress: bool = True) -> dict:
    from pvdm_fast.train import distributed as D
    from pvdm_fast.train.loop import flush_denormals

    if D.pick_device(device).type == "cpu":
        with flush_denormals():  # training and sampling alike
            return _run_demo(out, device, quick, progress)
    return _run_demo(out, device, quick, progress)


def _run_demo(out: str, device: str, quick: bool, progress: bool) -> dict:
    from pvdm_fast.data.dataset import open_dataset
    from pvdm_fast.data.latents import encode_to_cache, file_sha256
    from pvdm_fast.data.video_io import write_video
    from pvdm_fast.pipeline import Pipeline, load_autoencoder
    from pvdm_fast.train import distributed as D
    from pvdm_fast.train.autoencoder_trainer import AutoencoderTrainer
    from pvdm_fast.train.demo_metrics import clip_features, frechet_distance, psnr_db
    from pvdm_fast.train.diffusion_trainer import DiffusionTrainer
    from pvdm_fast.train.media import save_curves, save_gif, save_video_grid, video_grid_frames

    start = time.time()
    root = pathlib.Path(out)
    root.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(quick, device)
    ctx = D.DistContext(0, 1, 0, D.pick_device(device))
    data = cfg.data
    spec = f"synthetic:{TRAIN_VIDEOS}"

    ae_trainer = AutoencoderTrainer(cfg, _fresh(root / "autoencoder-run"), data=spec, ctx=ctx, progress=progress)
    ae_trainer.run()
    ae_file = root / "autoencoder.safetensors"
    shutil.copyfile(ae_trainer.run_dir / "autoencoder.safetensors", ae_file)

    autoencoder = load_autoencoder(ae_file).to(ctx.device)
    encode_to_cache(autoencoder, spec, _fresh(root / "latents"), autoencoder_id=file_sha256(ae_file),
                    autoencoder_config=ae_trainer.weights()["autoencoder"].config, resolution=data.resolution,
                    frames=data.frames, stride=data.frame_stride, batch_size=16, device=ctx.device, progress=progress)

    dm_trainer = DiffusionTrainer(cfg, _fresh(root / "diffusion-run"), autoencoder=ae_file, latents=root / "latents",
                                  ctx=ctx, progress=progress)
    dm_trainer.run()
    dm_file = root / "diffusion.safetensors"
    shutil.copyfile(dm_trainer.run_dir / "diffusion.safetensors", dm_file)

    # Held-out clips: other synthetic videos (another seed), fixed starts.
    def clips_of(dataset, limit: int) -> torch.Tensor:
        return torch.stack([dataset[i]["video"] for i in range(min(limit, len(dataset)))])

    heldout = clips_of(open_dataset(f"synthetic:{HELDOUT_VIDEOS}", resolution=data.resolution, frames=data.frames,
                                    stride=data.frame_stride, mode="eval", seed=HELDOUT_SEED), HELDOUT_VIDEOS)
    train_real = clips_of(open_dataset(spec, resolution=data.resolution, frames=data.frames, stride=data.frame_stride,
                                       mode="eval", seed=0), TRAIN_VIDEOS)
    autoencoder.eval()
    with torch.no_grad():
        recon = torch.cat([autoencoder(heldout[i:i + 8].to(ctx.device)).float().cpu()
                           for i in range(0, len(heldout), 8)])
    save_video_grid(root / "reconstructions.png", [heldout[:4], recon[:4]])

    pipe = Pipeline.from_checkpoints(ae_file, dm_file, device=ctx.device)
    steps = int(cfg.train_diffusion.sample_steps)
    videos = pipe(SAMPLE_VIDEOS, frames=SAMPLE_CLIPS * pipe.clip_frames, steps=steps, seed=0, progress=progress)
    save_gif(root / "samples.gif", _grid_uint8(videos))
    grid = _grid_uint8(videos)
    write_video(root / "samples.mp4", grid[:, :grid.shape[1] // 2 * 2, :grid.shape[2] // 2 * 2])

    samples = videos.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    sample_clips = torch.cat(samples.split(pipe.clip_frames, dim=2))  # every generated clip
    noise = torch.rand(train_real.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = {k: clip_features(v) for k, v in
             {"train": train_real, "samples": sample_clips, "heldout": heldout, "noise": noise}.items()}

    def final(history: list[dict], key: str) -> float | None:
        values = [h[key] for h in history if key in h]
        return values[-1] if values else None

    metrics = {
        "recon_psnr_db": psnr_db(recon, heldout),
        "autoencoder_final_loss": final(ae_trainer.history, "ae/loss"),
        "autoencoder_final_l1": final(ae_trainer.history, "ae/l1"),
        "diffusion_final_loss": final(dm_trainer.history, "unet/loss"),
        "frechet_samples": frechet_distance(feats["samples"], feats["train"]),
        "frechet_heldout_real": frechet_distance(feats["heldout"], feats["train"]),
        "frechet_noise": frechet_distance(feats["noise"], feats["train"]),
        "sample_videos": SAMPLE_VIDEOS, "sample_clips_per_video": SAMPLE_CLIPS, "sample_steps": steps,
        "quick": quick, "device": str(ctx.device),
    }
    save_curves(root / "loss_curves.png", {
        "autoencoder loss": [(h["clips"], h["ae/loss"]) for h in ae_trainer.history],
        "diffusion loss": [(h["clips"], h["unet/loss"]) for h in dm_trainer.history]})
    metrics["wall_seconds"] = round(time.time() - start, 1)
    (root / "metrics.json").write_text(json.dumps(metrics, indent=1))
    files = ["samples.gif", "samples.mp4", "reconstructions.png", "loss_curves.png", "autoencoder.safetensors",
             "diffusion.safetensors", "metrics.json"]
    return {"metrics": metrics, "files": files, "out": str(root)}


def _grid_uint8(videos: torch.Tensor):
    """uint8 (N, F, H, W, 3) -> (F, H, N * W, 3): the videos side by side."""
    return torch.cat(list(videos), dim=2).numpy()
