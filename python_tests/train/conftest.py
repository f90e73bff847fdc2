"""Tiny configs for the training tests: every model a few thousand parameters, clips 4x16x16."""

import pathlib

import pytest
import yaml

TINY = {
    "autoencoder": {"resolution": 16, "frames": 4, "patch_size": 4, "channels": 16, "embed_dim": 4,
                    "encoder_depth": 1, "decoder_depth": 1, "heads": 2, "dim_head": 8, "axis_depth": 1,
                    "axis_heads": 2, "axis_mlp_dim": 16},
    "unet": {"frames": 4, "height": 4, "width": 4, "model_channels": 32, "channel_mult": [1, 2],
             "num_res_blocks": 1, "attention_resolutions": [2], "num_heads": 2},
    "diffusion": {"timesteps": 100, "cond_prob": 0.5},
    "data": {"resolution": 16, "frames": 4, "frame_stride": 1},
    "train_autoencoder": {"batch_size": 2, "grad_accum": 2, "total_clips": 16, "lr": 1e-3, "lpips_weight": 0.0,
                          "disc_channels": 4, "disc_layers": 2, "gan_start_step": 2, "num_workers": 0,
                          "tensorboard": False, "log_every": 1, "checkpoint_every": 1000, "device": "cpu"},
    "train_diffusion": {"batch_size": 4, "grad_accum": 1, "total_clips": 16, "lr": 1e-3, "warmup_steps": 2,
                        "ema_decay": 0.9, "ema_every": 2, "num_workers": 0, "tensorboard": False, "log_every": 1,
                        "checkpoint_every": 1000, "device": "cpu"},
}


def write_config(path: pathlib.Path, **sections) -> pathlib.Path:
    cfg = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        cfg[name].update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_config(tmp_path):
    """A function (**section_updates) -> path of a tiny YAML config."""
    counter = iter(range(1000))
    return lambda **sections: write_config(tmp_path / f"tiny{next(counter)}.yaml", **sections)


@pytest.fixture
def tiny_autoencoder(tmp_path):
    """A randomly initialised tiny autoencoder saved as a pvdm_fast weights file."""
    from dataclasses import asdict

    import torch

    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.io import save_weights

    torch.manual_seed(0)
    config = AutoencoderConfig(**TINY["autoencoder"])
    path = tmp_path / "ae.safetensors"
    save_weights(path, Autoencoder(config).state_dict(), "autoencoder", asdict(config))
    return path
