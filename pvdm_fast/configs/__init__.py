"""Config presets and loading: YAML files validated against the dataclasses that own each section.

A config is an OmegaConf tree with one section per component: `autoencoder` (AutoencoderConfig),
`unet` (UNetConfig), `diffusion` (DiffusionConfig), `data` (DataConfig). The training stages own
`train_autoencoder` and `train_diffusion` (checked by pvdm_fast.train.config, which this module does
not import); a later stage adds its section's name to STAGE_SECTIONS. An unknown section or an
unknown key in a known section is an error, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import importlib
import pathlib
from dataclasses import dataclass
from typing import Any, Iterable, Optional

PRESET_DIR = pathlib.Path(__file__).resolve().parent


@dataclass
class DataConfig:
    resolution: int = 256       # square side of the clips fed to the autoencoder
    frames: int = 16            # frames per clip (the diffusion model sees 2x this when conditioned)
    frame_stride: int = 1       # take every n-th frame of the source video
    split: Optional[str] = None # training videos: None = the format's default (ucf101 all, sky train);
                                #   the official UCF-101 runs trained on ucf101 split train, fold 1
    fold: int = 1               # ucf101 split fold (1-3)
    antialias: bool = True      # antialiased resize; false: the official plain bilinear


# section -> (module, class); imported lazily so `pvdm_fast.configs` stays light
SECTIONS: dict[str, tuple[str, str]] = {
    "autoencoder": ("pvdm_fast.models.autoencoder", "AutoencoderConfig"),
    "unet": ("pvdm_fast.models.unet", "UNetConfig"),
    "diffusion": ("pvdm_fast.diffusion.schedule", "DiffusionConfig"),
    "data": ("pvdm_fast.configs", "DataConfig"),
}

# sections whose keys and values the stage that owns them checks (pvdm_fast.train.config.SECTIONS)
STAGE_SECTIONS = ("train_autoencoder", "train_diffusion")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def section_class(name: str) -> type:
    module, cls = SECTIONS[name]
    return getattr(importlib.import_module(module), cls)


def _source(name_or_path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(name_or_path)
    # a folder that happens to share a preset's name (e.g. a run folder ./demo) is not a config file
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found (presets: {', '.join(list_presets())})")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise ValueError(f"unknown config {name_or_path!r}: give a preset ({', '.join(list_presets())}) "
                         f"or a path to a .yaml file")
    return preset


def _check_section(cfg, name: str) -> None:
    from omegaconf import OmegaConf

    node = cfg.get(name)
    if node is None:
        return
    if not OmegaConf.is_dict(node):
        raise ValueError(f"config section {name!r} must be a mapping of keys to values")
    allowed = {f.name for f in dataclasses.fields(section_class(name))}
    unknown = sorted(set(node.keys()) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section {name!r}; allowed: {sorted(allowed)}")


def load_config(name_or_path: str | pathlib.Path, overrides: Iterable[str] = (), *, consistent: bool = True):
    """A preset name or YAML path, with `section.key=value` overrides applied, validated.

    Known sections are filled with their dataclass defaults for missing keys, so every consumer sees
    the full set of values that were actually used. `consistent=False` skips the checks between
    sections (UNet grid = autoencoder grid, data = autoencoder clips), for a caller that uses one
    section alone (`pvdm convert --kind unet`).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(_source(name_or_path))
        overrides = list(overrides)
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like section.key=value")
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise ValueError(f"cannot read config {name_or_path}: {exc}") from exc
    if not OmegaConf.is_dict(cfg):
        raise ValueError(f"config {name_or_path} must be a mapping of sections")
    known = [*SECTIONS, *STAGE_SECTIONS]
    unknown = sorted(str(k) for k in cfg.keys() if k not in known)
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown} in {name_or_path} (or its overrides); "
                         f"known sections: {known}")
    for name in SECTIONS:
        _check_section(cfg, name)
        if name in cfg:
            cfg[name] = OmegaConf.merge(OmegaConf.create(dataclasses.asdict(section_class(name)())), cfg[name])
    if consistent:
        _check_consistency(cfg)
    return cfg


def build(cfg, name: str) -> Any:
    """The dataclass instance of section `name` (defaults for keys the config does not set)."""
    from omegaconf import OmegaConf

    if name not in SECTIONS:
        raise ValueError(f"unknown config section {name!r}; known: {sorted(SECTIONS)}")
    _check_section(cfg, name)
    values = OmegaConf.to_container(cfg.get(name) or {}, resolve=True)
    obj = section_class(name)(**values)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _check_consistency(cfg) -> None:
    """The UNet works on the autoencoder's latent grid, and the data feeds the autoencoder."""
    from omegaconf import OmegaConf

    ae, unet, data = cfg.get("autoencoder"), cfg.get("unet"), cfg.get("data")
    if ae is None:
        return
    ae_cfg = section_class("autoencoder")(**OmegaConf.to_container(ae, resolve=True))
    hh, ww = ae_cfg.frame_size  # resolution may be an int or [height, width]
    p = ae_cfg.patch_size
    if p <= 0 or hh % p or ww % p:
        raise ValueError(f"autoencoder.resolution ({ae.resolution}) must be a multiple of "
                         f"autoencoder.patch_size ({p})")
    grid = ae_cfg.grid
    if unet is not None and (unet.frames, unet.height, unet.width) != grid:
        raise ValueError(f"unet.frames/height/width {(unet.frames, unet.height, unet.width)} must equal the "
                         f"autoencoder's latent grid (T, H/p, W/p) = {grid}")
    if unet is not None:
        unet_cfg = section_class("unet")(**OmegaConf.to_container(unet, resolve=True))
        if (unet_cfg.in_channels, unet_cfg.out_channels) != (ae_cfg.embed_dim,) * 2:
            raise ValueError(f"unet.in_channels/out_channels ({unet_cfg.in_channels}, {unet_cfg.out_channels}) must "
                             f"equal autoencoder.embed_dim ({ae_cfg.embed_dim}), the latent channels; set "
                             f"unet.in_channels={ae_cfg.embed_dim} unet.out_channels={ae_cfg.embed_dim}")
    # the data pipeline makes square clips, so a non-square autoencoder cannot be fed by it
    if data is not None and ((data.resolution, data.resolution), data.frames) != ((hh, ww), ae.frames):
        raise ValueError(f"data.resolution/frames ({data.resolution}, {data.frames}) must equal "
                         f"autoencoder.resolution/frames ({ae.resolution}, {ae.frames}); the data pipeline "
                         f"makes square clips")
