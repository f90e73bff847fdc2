"""pvdm_fast: fast, lean PVDM (projected latent video diffusion) for NVIDIA GPUs."""

__version__ = "0.1.0"
