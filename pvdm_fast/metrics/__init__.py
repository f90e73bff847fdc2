"""FVD (I3D), KVD, IS (C3D), PSNR/SSIM/LPIPS, and the streaming feature statistics behind them.

No weights ship with the package: `load_i3d`, `load_c3d` and `LPIPS.from_file` take the user's files.
Names are exported lazily so that the CLI can register `pvdm eval` without importing torch.
"""

import importlib

_EXPORTS = {
    "C3D": "c3d", "load_c3d": "c3d",
    "frechet_distance": "fvd", "frechet_distance_from_stats": "fvd",
    "InceptionI3D": "i3d", "i3d_features": "i3d", "load_i3d": "i3d", "preprocess_for_i3d": "i3d",
    "inception_score": "inception_score",
    "kernel_distance": "kvd",
    "psnr": "recon", "ssim": "recon",
    "FeatureStats": "stats", "load_stats": "stats", "save_stats": "stats",
}
__all__ = sorted([*_EXPORTS, "LPIPS"])


def __getattr__(name: str):
    if name == "LPIPS":
        from pvdm_fast.models.lpips import LPIPS

        return LPIPS
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"pvdm_fast.metrics.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pvdm_fast.metrics' has no attribute {name!r}")
