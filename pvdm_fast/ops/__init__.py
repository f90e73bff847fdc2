"""Fused ops, each with a PyTorch reference and reference/triton/cuda backends (see dispatch.py)."""

from pvdm_fast.ops.dispatch import BACKENDS, describe, use_backend
from pvdm_fast.ops.group_norm_silu import group_norm_silu, group_norm_silu_reference

__all__ = ["BACKENDS", "describe", "use_backend", "group_norm_silu", "group_norm_silu_reference"]
