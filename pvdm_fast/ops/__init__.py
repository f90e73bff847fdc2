"""Fused ops, each with a PyTorch reference and reference/triton/cuda backends (see dispatch.py)."""

from pvdm_fast.ops.dispatch import BACKENDS, describe, fused, use_backend
from pvdm_fast.ops.group_norm_silu import group_norm_silu, group_norm_silu_reference
from pvdm_fast.ops.triplane_decode import triplane_decode, triplane_decode_reference, triplane_sum
from pvdm_fast.ops.axis_gather import axis_gather, axis_gather_unfused
from pvdm_fast.ops.axial_attention import axial_attention, axial_attention_reference
from pvdm_fast.ops.joint_attention import joint_attention, joint_attention_reference

__all__ = ["BACKENDS", "describe", "fused", "use_backend", "group_norm_silu", "group_norm_silu_reference",
           "triplane_decode", "triplane_decode_reference", "triplane_sum", "axis_gather", "axis_gather_unfused",
           "axial_attention", "axial_attention_reference", "joint_attention", "joint_attention_reference"]
