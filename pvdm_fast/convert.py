"""Official PVDM checkpoints -> pvdm_fast modules (strict: every official key is used exactly once)."""

from __future__ import annotations

import os
import pathlib
import pickle

import torch

# Prefixes official checkpoints carry: DDP's `module.`, the LDM wrapper's `diffusion_model.`.
OFFICIAL_PREFIXES = ("module.", "diffusion_model.", "model.diffusion_model.")


def read_official(source) -> dict:
    """A state dict from a dict or an official `.pth`/`.pt`/`.safetensors` path (weights_only load).

    Accepts files that wrap the weights under 'state_dict' / 'model' / 'ema'.
    """
    if isinstance(source, dict):
        sd = source
    else:
        path = pathlib.Path(os.fspath(source))
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(path))
            else:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except MemoryError:
            raise
        except pickle.UnpicklingError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            cause = next((ln for ln in lines if "Unsupported global" in ln), None)
            if cause is not None:  # a real pickle of objects besides tensors
                raise ValueError(f"{path}: torch.load(weights_only=True) refused it ({cause}): it holds Python "
                                 "objects besides tensors. If you trust the file, load it with "
                                 "weights_only=False in your own script and torch.save its state dict") from exc
            what = next((ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else "")
            raise ValueError(f"{path} is not a readable checkpoint (unpickling: {what}); expected an official "
                             "PVDM .pth (torch.save of a state dict); is it truncated?") from exc
        except Exception as exc:  # a zip reader's RuntimeError, KeyError from text, EOFError, ...
            raise ValueError(f"{path} is not a readable checkpoint ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); expected an official PVDM "
                             ".pth (torch.save of a state dict) or a .safetensors file; is it truncated?") from exc
        if not isinstance(sd, dict):
            raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict of tensors")
    for wrapper in ("state_dict", "model", "ema"):
        if isinstance(sd.get(wrapper), dict) and not any(torch.is_tensor(v) for v in sd.values()):
            sd = sd[wrapper]
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def strip_prefixes(sd: dict, prefixes=OFFICIAL_PREFIXES) -> dict:
    """Drop each known wrapper prefix when every key carries it."""
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_strict(module: torch.nn.Module, sd: dict, what: str) -> torch.nn.Module:
    """load_state_dict(strict=True) with an error that names the missing/unexpected keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or bad_shape:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = [f"missing keys: {show(missing)}" if missing else "",
                 f"unexpected keys: {show(unexpected)}" if unexpected else "",
                 "shape mismatch: " + show([f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape])
                 if bad_shape else ""]
        raise ValueError(f"{what}: checkpoint does not match the model; " + "; ".join(p for p in parts if p))
    module.load_state_dict(sd, strict=True)
    return module


# ---- autoencoder (models/autoencoder.py) ----

# The axis projections' head count is a constructor constant of the official model (4): the weights
# only fix heads * head_dim, so it cannot be read from a checkpoint.
OFFICIAL_AXIS_HEADS = 4


def _count_layers(sd: dict, prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def autoencoder_config_from_official(sd: dict, resolution=None, frames=None,
                                     axis_heads: int = OFFICIAL_AXIS_HEADS) -> "AutoencoderConfig":
    """Every size of an official autoencoder read from its weights; `resolution` / `frames`, when
    given, must agree with them (the position embeddings fix both). The weights fix only the axis
    projections' heads x head_dim: `axis_heads` (the official 4, or a preset's) splits it."""
    from pvdm_fast.models.autoencoder import AutoencoderConfig

    try:
        c, patch_in = sd["encoder.to_patch_embedding.weight"].shape
        in_ch = sd["to_pixel.1.weight"].shape[1]
        p = int(round((patch_in / in_ch) ** 0.5))
        dim_head = 2 * sd["encoder.frame_rot_emb.inv_freqs"].shape[0]
        heads = sd["encoder.layers.0.0.fn.to_qkv.weight"].shape[0] // (3 * dim_head)
        axis_inner = sd["xy_quant_attn.layers.0.0.fn.to_qkv.weight"].shape[0] // 3
        if axis_heads < 1 or axis_inner % axis_heads:
            raise ValueError(f"axis_heads={axis_heads} does not divide the axis projections' width "
                             f"{axis_inner} in these weights; set autoencoder.axis_heads to the value "
                             "they were trained with")
        t = sd["xy_pos_embedding"].shape[1] - 1
        h = sd["yt_pos_embedding"].shape[1] - 1
        w = sd["xt_pos_embedding"].shape[1] - 1
        cfg = AutoencoderConfig(
            resolution=h * p if h == w else [h * p, w * p], frames=t, patch_size=p, channels=c,
            embed_dim=sd["pre_xy.weight"].shape[0], encoder_depth=_count_layers(sd, "encoder.layers."),
            decoder_depth=_count_layers(sd, "decoder.layers."), heads=heads, dim_head=dim_head,
            axis_depth=_count_layers(sd, "xy_quant_attn.layers."), axis_heads=axis_heads,
            axis_dim_head=axis_inner // axis_heads,
            axis_mlp_dim=sd["xy_quant_attn.layers.0.1.fn.net.0.weight"].shape[0], in_channels=in_ch)
    except KeyError as exc:
        raise ValueError(f"not an official PVDM autoencoder state dict: key {exc} is missing") from exc
    if frames is not None and int(frames) != cfg.frames:
        raise ValueError(f"frames={frames} disagrees with the checkpoint (its xy position embedding is for "
                         f"{cfg.frames} frames)")
    if resolution is not None and cfg.frame_size != AutoencoderConfig(resolution=resolution).frame_size:
        raise ValueError(f"resolution={resolution} disagrees with the checkpoint (its planes are for "
                         f"{cfg.frame_size[0]}x{cfg.frame_size[1]} frames with patch {p})")
    return cfg


def autoencoder_from_official(source, resolution=None, frames=None, *, config=None) -> "Autoencoder":
    """An official PVDM autoencoder (state dict or `.pth` path) -> Autoencoder, loaded strictly.

    Sizes are read from the weights (`resolution`/`frames` are checked against them), or taken from
    `config` (an AutoencoderConfig or mapping, also accepted as the second positional argument).
    Module names match the official ones, so the state dict loads as is, except the `coords` buffer,
    which the official model registers but never reads (its size hard-codes 16 frames). The stored
    rotary buffers (`inv_freqs`, `scales`) are loaded and used.
    """
    from collections.abc import Mapping

    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig

    if isinstance(resolution, (AutoencoderConfig, Mapping)):  # autoencoder_from_official(sd, config)
        if config is not None:
            raise ValueError("autoencoder_from_official: config given twice (positionally and by keyword)")
        config, resolution = resolution, None
    sd = strip_prefixes(read_official(source))
    sd = {k: v for k, v in sd.items() if k != "coords"}
    if config is None:
        config = autoencoder_config_from_official(sd, resolution, frames)
    elif resolution is not None or frames is not None:
        raise ValueError("autoencoder_from_official: pass either config or resolution/frames, not both")
    elif not isinstance(config, AutoencoderConfig):
        config = AutoencoderConfig(**dict(config))
    with torch.device("meta"):
        model = Autoencoder(config)
    model = model.to_empty(device="cpu")
    load_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
                "autoencoder_from_official")
    return model


# ---- UNet (models/unet.py) ----

# Official UNetModel arguments that do not change the weights' meaning for the triplane UNet.
_UNET_IGNORED = {"image_size", "use_fp16", "legacy", "use_new_attention_order", "num_heads_upsample",
                 "use_spatial_transformer", "transformer_depth", "context_dim", "n_embed", "num_classes"}
_UNET_RENAMED = {"use_checkpoint": "checkpoint"}


def unet_config_from_official(sd: dict, latent_shape, **official) -> "UNetConfig":
    """A UNetConfig from the official YAML arguments (their key names) plus what the weights imply."""
    from dataclasses import fields

    from pvdm_fast.models.unet import UNetConfig

    if "input_blocks.0.0.weight" not in sd or "out.2.weight" not in sd:
        raise ValueError("not an official PVDM UNet state dict: input_blocks.0.0.weight / out.2.weight missing")
    if official.pop("dims", 2) != 2:
        raise ValueError("only the 2D (dims=2) official UNet is supported")
    if official.get("num_heads_upsample", -1) not in (-1, official.get("num_heads", 8)):
        raise ValueError("num_heads_upsample different from num_heads is not supported")
    names = {f.name for f in fields(UNetConfig)}
    kwargs = {}
    for key, value in official.items():
        key = _UNET_RENAMED.get(key, key)
        if key in _UNET_IGNORED:
            continue
        if key not in names:
            raise ValueError(f"unknown official UNet argument {key!r}; known: {', '.join(sorted(names))}")
        kwargs[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    stem = sd["input_blocks.0.0.weight"]
    kwargs.setdefault("cond_model", "zeros" in sd)
    kwargs.setdefault("model_channels", int(stem.shape[0]))
    kwargs.setdefault("in_channels", int(stem.shape[1]) // (2 if kwargs["cond_model"] else 1))
    kwargs.setdefault("out_channels", int(sd["out.2.weight"].shape[0]))
    frames, height, width = (int(s) for s in latent_shape)
    return UNetConfig(frames=frames, height=height, width=width, **kwargs)


def unet_from_official(source, config=None, *, latent_shape=None, **official) -> "TriplaneUNet":
    """An official PVDM UNet (state dict or `.pth` path) -> TriplaneUNet, loaded strictly.

    Either pass our `UNetConfig`, or `latent_shape=(T, h, w)` plus the official YAML arguments
    (model_channels, channel_mult, num_res_blocks, attention_resolutions, num_heads, ...); channels and
    conditioning are then read from the weights. Module names match the official ones, so the only
    change is dropping the `zeros` buffer, whose size the official code hard-codes (we build zeros on
    the fly for any latent length).
    """
    from pvdm_fast.models.unet import TriplaneUNet, UNetConfig

    sd = strip_prefixes(read_official(source))
    if config is None:
        if latent_shape is None:
            raise ValueError("unet_from_official: pass a UNetConfig or latent_shape=(T, h, w) with the official arguments")
        config = unet_config_from_official(sd, latent_shape, **official)
    elif official or latent_shape is not None:
        raise ValueError("unet_from_official: pass either a UNetConfig or latent_shape + official arguments, not both")
    elif not isinstance(config, UNetConfig):
        config = UNetConfig(**dict(config))
    zeros = sd.get("zeros")
    if zeros is not None and bool(zeros.any()):
        raise ValueError("official UNet checkpoint has a non-zero `zeros` buffer; it is not a PVDM UNet")
    sd = {k: v for k, v in sd.items() if k != "zeros"}
    with torch.device("meta"):
        model = TriplaneUNet(config)
    model = model.to_empty(device="cpu")
    load_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, "unet_from_official")
    return model


# ---- official file -> pvdm_fast weights file (`pvdm convert`) ----

CONVERT_KINDS = ("autoencoder", "unet")


def convert_official_file(kind: str, source, dest, config="ucf101-256", overrides=()) -> dict:
    """Convert an official `.pth` into a self-describing pvdm_fast safetensors file.

    `config` is a preset name or YAML path (read with `pvdm_fast.configs.load_config`, `overrides` as
    key=value); its `autoencoder` / `unet` (+ `diffusion`) sections are stored with the weights.
    Returns the stored config.
    """
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from pvdm_fast.configs import load_config
    from pvdm_fast.models.io import save_weights

    if kind not in CONVERT_KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(CONVERT_KINDS)}")
    # one model per conversion: its own section must be valid, not its agreement with the other model's
    # preset values (a UNet trained on another latent grid, e.g. unet.frames=8, converts on its own)
    cfg = load_config(str(config), list(overrides), consistent=False)

    def section(name: str) -> dict:
        return OmegaConf.to_container(cfg[name], resolve=True)

    if kind == "unet":
        from pvdm_fast.diffusion.schedule import DiffusionConfig
        from pvdm_fast.models.unet import UNetConfig

        model = unet_from_official(source, UNetConfig(**section("unet")))
        stored = {"unet": asdict(model.config), "diffusion": asdict(DiffusionConfig(**section("diffusion")))}
    else:
        # every size of the autoencoder is in its weights; the preset supplies the axis projections'
        # head count (the weights fix only heads x head_dim; 4 in every official preset), as when
        # `pvdm sample --official-autoencoder` loads the same file with the same preset
        sd = strip_prefixes(read_official(source))
        inferred = autoencoder_config_from_official(
            {k: v for k, v in sd.items() if k != "coords"},
            axis_heads=int(section("autoencoder").get("axis_heads", OFFICIAL_AXIS_HEADS)))
        inferred.checkpoint = bool(section("autoencoder").get("checkpoint", False))
        model = autoencoder_from_official(sd, config=inferred)
        stored = {"autoencoder": asdict(model.config)}
    save_weights(dest, model.state_dict(), kind, stored)
    return stored
