"""Tiny random-weight models for the pipeline and `pvdm sample` tests (CPU, milliseconds per step).

The UNet's output convolution is zero-initialised, which would make every eps zero and hide any
conditioning or guidance bug; the weights are therefore perturbed so the model's output depends on
its inputs.
"""
import torch

AE_FIELDS = dict(resolution=16, frames=4, patch_size=4, channels=32, embed_dim=4, encoder_depth=1,
                 decoder_depth=1, heads=2, dim_head=8, axis_depth=1, axis_heads=2, axis_mlp_dim=32)
UNET_FIELDS = dict(model_channels=32, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
                   num_heads=2)


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module


def tiny_models(cond_model: bool = True):
    """(Autoencoder, TriplaneUNet, DiffusionConfig) with matching latent grids (4, 4, 4)."""
    from pvdm_fast.diffusion.schedule import DiffusionConfig
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.unet import TriplaneUNet, UNetConfig

    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(**AE_FIELDS)).eval()
    frames, height, width = ae.config.grid
    unet = TriplaneUNet(UNetConfig(frames=frames, height=height, width=width, cond_model=cond_model,
                                   **UNET_FIELDS)).eval()
    return ae, randomize(unet), DiffusionConfig()
