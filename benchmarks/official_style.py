"""An official-style eager execution of the autoencoder's attention: a same-machine baseline.

The official PVDM autoencoder (a TimeSformer derivative) keeps tokens as (B, N, C), splits q, k, v
with `chunk`, moves them between layouts with einops rearranges, rotates pairs through a
rearrange / unbind / stack of (-x_odd, x_even), and attends with explicit score matrices (einsum,
softmax, einsum). `official_style(model)` returns a copy of one of our autoencoders whose divided
space-time attention layers compute that way: same weights, same function (a test checks the outputs
agree in float64), only the execution differs. `benchmarks/train_step.py --compare-official-style`
times both in one process, step for step, so that machine load hits both alike.

Everything else (patch embedding, LayerNorm, GEGLU, axis projections, decoder head) is shared with
our model, and the baseline leaves out work the official code may also do (e.g. slicing off and
concatenating back a pass-through part of the head dim), so it is a lean lower bound on the
official cost rather than a replica.
"""
from __future__ import annotations

import copy
import types

import torch
from einops import rearrange
from torch import Tensor


def _swap_pairs_negating(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) through the pair layout."""
    pairs = rearrange(x, "... (d j) -> ... d j", j=2)
    even, odd = pairs.unbind(dim=-1)
    return rearrange(torch.stack((-odd, even), dim=-1), "... d j -> ... (d j)")


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + _swap_pairs_negating(x) * sin


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scores = torch.einsum("b i d, b j d -> b i j", q, k)
    return torch.einsum("b i j, b j d -> b i d", scores.softmax(dim=-1), v)


def _grid_attention_forward(self, x: Tensor, axis: str, rotary, fused: bool = False) -> Tensor:
    b, t, h, w, c = x.shape
    cos, sin = rotary
    tokens = x.reshape(b, t * h * w, c)
    q, k, v = self.to_qkv(tokens).chunk(3, dim=-1)
    q, k, v = (rearrange(z, "b n (h d) -> (b h) n d", h=self.heads) for z in (q, k, v))
    q = q * self.dim_head ** -0.5
    if axis == "time":
        into, back = "b (f n) d -> (b n) f d", "(b n) f d -> b (f n) d"
    else:
        into, back = "b (f n) d -> (b f) n d", "(b f) n d -> b (f n) d"
    q, k, v = (rearrange(z, into, f=t) for z in (q, k, v))
    out = _attend(_rotate(q, cos, sin), _rotate(k, cos, sin), v)
    out = rearrange(rearrange(out, back, f=t, n=h * w), "(b h) n d -> b n (h d)", h=self.heads)
    return self.to_out(out).view(b, t, h, w, c)


def _run_blocks(self, x: Tensor, normed_first: Tensor | None = None) -> Tensor:
    _, t, h, w, _ = x.shape
    dtype = x.dtype
    time_angles = self.frame_rot_emb.angles(t)            # (t, d)
    space_angles = self.image_rot_emb.angles(h, w)        # (h*w, d)
    rot_time = (time_angles.cos().to(dtype), time_angles.sin().to(dtype))
    rot_space = (space_angles.cos().to(dtype), space_angles.sin().to(dtype))
    for i, block in enumerate(self.layers):
        x = block(x, rot_time, rot_space, normed_first if i == 0 else None, (False, False))
    return x


def official_style(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` (an Autoencoder) whose TimeSformer attention runs official-style."""
    from pvdm_fast.models.layers import GridAttention, TimeSformer

    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, TimeSformer):
            module.run_blocks = types.MethodType(_run_blocks, module)
        elif isinstance(module, GridAttention):
            module.forward = types.MethodType(_grid_attention_forward, module)
    return twin
