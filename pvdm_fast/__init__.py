"""pvdm_fast: fast, lean PVDM (projected latent video diffusion) for NVIDIA GPUs."""

__version__ = "0.1.0"

__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    # Lazy: `import pvdm_fast` must stay light (no torch models, no PyAV) until Pipeline is used.
    if name == "Pipeline":
        from pvdm_fast.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'pvdm_fast' has no attribute {name!r}")
