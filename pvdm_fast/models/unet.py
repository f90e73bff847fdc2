"""The triplane diffusion UNet: ADM 2D blocks shared by the xy, yt and xt planes, joint attention.

The flat latent (B, 4, h*w + T*w + T*h) is split into its three planes. Each UNet entry (stem, each
input block, the middle block, each output block) runs on every plane with the same weights; planes of
equal shape are stacked on the batch axis and go through the entry in one call (GroupNorm statistics
stay per plane because each stacked sample is normalised on its own). After every entry but the stem
the planes are flattened, concatenated along tokens and mixed by a joint attention block. Module names
and nesting follow the official checkpoints so that `convert.unet_from_official` loads them by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from pvdm_fast.models.triplane import latent_length, merge_planes, split_planes
from pvdm_fast.models.unet_blocks import (AttentionBlock, Downsample, ResBlock, TimestepSequential, Upsample,
                                          check_norm_channels, norm_act, timestep_embedding)


@dataclass
class UNetConfig:
    frames: int = 16            # latent grid (T, h, w): the autoencoder's token grid
    height: int = 32
    width: int = 32
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 256
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (4, 2, 1)  # down-sampling rates (1 = full resolution) with attention
    num_heads: int = 8
    num_head_channels: int = -1               # > 0: heads = width // num_head_channels (overrides num_heads)
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    dropout: float = 0.0
    cond_model: bool = True                   # condition by channel concat (zeros when no condition)
    checkpoint: bool = False                  # activation checkpointing per UNet entry
    conv_resample: bool = True                # only used with resblock_updown=False (official default)

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    @property
    def latent_length(self) -> int:
        return latent_length(*self.grid)

    def heads_for(self, channels: int) -> int:
        if self.num_head_channels == -1:
            return self.num_heads
        if self.num_head_channels <= 0 or channels % self.num_head_channels:
            raise ValueError(f"num_head_channels={self.num_head_channels} must divide every attended width "
                             f"(got a level of {channels} channels)")
        return channels // self.num_head_channels

    def validate(self) -> None:
        for name in ("frames", "height", "width", "in_channels", "out_channels", "model_channels", "num_res_blocks"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"UNetConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"UNetConfig.channel_mult must be a non-empty list of positive ints, got {self.channel_mult}")
        if self.num_head_channels == -1 and self.num_heads <= 0:
            raise ValueError("UNetConfig: set num_heads > 0 or num_head_channels > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if int(self.in_channels) != int(self.out_channels):
            raise ValueError(f"UNetConfig: in_channels ({self.in_channels}) and out_channels ({self.out_channels}) "
                             "must be equal (the network predicts the noise of its input latent)")
        rates = [2 ** i for i in range(len(self.channel_mult))]
        unreachable = sorted(set(self.attention_resolutions) - set(rates))
        if unreachable:
            raise ValueError(f"UNetConfig.attention_resolutions {list(self.attention_resolutions)}: no level has the "
                             f"down-sampling rate(s) {unreachable}; with {len(self.channel_mult)} levels in "
                             f"channel_mult the rates are {rates}")
        factor = 2 ** (len(self.channel_mult) - 1)
        bad = [f"{n}={s}" for n, s in zip(("frames", "height", "width"), self.grid) if s % factor]
        if bad:
            raise ValueError(
                f"the latent grid (T={self.frames}, h={self.height}, w={self.width}) cannot be halved "
                f"{len(self.channel_mult) - 1} times ({len(self.channel_mult)} levels in channel_mult): "
                f"{', '.join(bad)} not divisible by {factor}; use fewer levels or a grid divisible by {factor}")


def check_latents_match(ae_config, unet_config, remedy: str) -> None:
    """The UNet must work on the autoencoder's latents: the same grid (T, h, w) and channels."""
    ae_grid = tuple(int(g) for g in ae_config.grid)
    if ae_grid != tuple(int(g) for g in unet_config.grid):
        raise ValueError(f"the autoencoder's latent grid (T, h, w) = {ae_grid} does not match the UNet's "
                         f"{tuple(unet_config.grid)}; {remedy}")
    e = int(ae_config.embed_dim)
    if int(unet_config.in_channels) != e:
        raise ValueError(f"the autoencoder makes {e}-channel latents but the UNet takes {unet_config.in_channels} "
                         f"(unet.in_channels/out_channels); {remedy}")


class TriplaneUNet(nn.Module):
    """eps = unet(x, t, cond=None); x, cond: (B, in_channels, h*w + T*w + T*h); t: (B,) timesteps."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        mc, emb_dim = config.model_channels, 4 * config.model_channels
        self.batch_equal_planes = True  # stack equal-shape planes into one call (off only to test it)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        stem_in = config.in_channels * (2 if config.cond_model else 1)
        self.input_blocks = nn.ModuleList([TimestepSequential([nn.Conv2d(stem_in, mc, 3, padding=1)])])
        self.input_attns = nn.ModuleList([nn.Identity()])  # the stem output is not jointly attended

        def res(ch_in: int, ch_out: int, resample: str | None = None) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, config.dropout, config.use_scale_shift_norm, resample)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, config.heads_for(ch))

        check_norm_channels(mc)
        skip_chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in config.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepSequential(layers))
                self.input_attns.append(attn(ch))
                skip_chans.append(ch)
            if level != len(config.channel_mult) - 1:
                down = res(ch, ch, "down") if config.resblock_updown else Downsample(ch, config.conv_resample)
                self.input_blocks.append(TimestepSequential([down]))
                self.input_attns.append(attn(ch))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential([res(ch, ch), attn(ch), res(ch, ch)])
        self.mid_attn = attn(ch)

        self.output_blocks = nn.ModuleList()
        self.output_attns = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in config.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, "up") if config.resblock_updown else Upsample(ch, config.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(layers))
                self.output_attns.append(attn(ch))

        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    # ---- per-plane application

    def _per_plane(self, fn: Callable[[Tensor, Tensor], Tensor], planes: Sequence[Tensor], emb: Tensor) -> list[Tensor]:
        """Apply fn(x, emb) to each plane; planes of equal shape are stacked along the batch axis."""
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(planes):
            key = tuple(p.shape[2:]) if self.batch_equal_planes else (i,)
            groups.setdefault(key, []).append(i)
        out: list[Tensor | None] = [None] * len(planes)
        for idx in groups.values():
            x = planes[idx[0]] if len(idx) == 1 else torch.cat([planes[i] for i in idx], dim=0)
            e = emb if len(idx) == 1 else emb.repeat(len(idx), 1)
            y = self._maybe_checkpoint(fn, x, e)
            for i, part in zip(idx, y.chunk(len(idx), dim=0)):
                out[i] = part
        return out  # type: ignore[return-value]

    def _maybe_checkpoint(self, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
        if self.config.checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _joint(self, block: nn.Module, planes: Sequence[Tensor]) -> list[Tensor]:
        """Joint attention over the tokens of all planes (official order xy, yt, xt)."""
        if isinstance(block, nn.Identity):
            return list(planes)
        shapes = [tuple(p.shape[2:]) for p in planes]
        h = self._maybe_checkpoint(block, merge_planes(planes))
        return list(split_planes(h, shapes[1][0], shapes[0][0], shapes[0][1]))

    # ---- forward

    def forward(self, x: Tensor, t: Tensor | int | float, cond: Tensor | None = None) -> Tensor:
        cfg = self.config
        expected = (cfg.in_channels, cfg.latent_length)
        if x.dim() != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"TriplaneUNet: x must be (B, {expected[0]}, {expected[1]}) for the grid "
                             f"T={cfg.frames}, h={cfg.height}, w={cfg.width}; got {tuple(x.shape)}")
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"TriplaneUNet: t must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        if cfg.cond_model:
            if cond is None:
                cond = torch.zeros_like(x)
            elif cond.shape != x.shape:
                raise ValueError(f"TriplaneUNet: cond must have x's shape {tuple(x.shape)}, got {tuple(cond.shape)}")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("TriplaneUNet: this model was built with cond_model=False and takes no condition")

        emb = self.time_embed(timestep_embedding(t, cfg.model_channels).to(self.time_embed[0].weight.dtype))
        planes = split_planes(x, *cfg.grid)
        skips = []
        for block, joint in zip(self.input_blocks, self.input_attns):
            planes = self._joint(joint, self._per_plane(block, planes, emb))
            skips.append(planes)
        planes = self._joint(self.mid_attn, self._per_plane(self.middle_block, planes, emb))
        for block, joint in zip(self.output_blocks, self.output_attns):
            skip = skips.pop()
            planes = [torch.cat([p, s], dim=1) for p, s in zip(planes, skip)]
            planes = self._joint(joint, self._per_plane(block, planes, emb))
        planes = self._per_plane(self._head, planes, emb)
        return merge_planes(planes)

    def _head(self, h: Tensor, emb: Tensor) -> Tensor:
        return self.out[2](norm_act(self.out[0], h))

