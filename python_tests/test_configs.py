"""Config presets and loading: validated sections, overrides, consistent grids, clear errors."""
import pytest

from pvdm_fast.configs import build, list_presets, load_config


def test_the_four_presets_exist_and_build_every_section():
    assert {"ucf101-256", "sky-256", "ucf101-128", "demo", "tiny"} <= set(list_presets())
    for name in list_presets():
        cfg = load_config(name)
        ae = build(cfg, "autoencoder")
        unet = build(cfg, "unet")
        diffusion = build(cfg, "diffusion")
        data = build(cfg, "data")
        assert (unet.frames, unet.height, unet.width) == ae.grid
        assert (data.resolution, data.frames) == (ae.resolution, ae.frames)
        assert diffusion.timesteps > 0


def test_preset_values_follow_the_paper():
    ucf, sky, ucf128 = (load_config(n) for n in ("ucf101-256", "sky-256", "ucf101-128"))
    assert ucf.diffusion.cond_prob == 0.3 and sky.diffusion.cond_prob == 0.2
    assert build(ucf, "autoencoder").grid == (16, 32, 32)
    assert build(ucf128, "autoencoder").grid == (16, 32, 32)  # patch 4 at 128 keeps the grid
    assert ucf128.autoencoder.patch_size == 4


def test_overrides_and_defaults_for_missing_keys(tmp_path):
    cfg = load_config("demo", ["diffusion.cond_prob=0.5", "autoencoder.checkpoint=true"])
    assert cfg.diffusion.cond_prob == 0.5 and cfg.autoencoder.checkpoint is True
    path = tmp_path / "mine.yaml"
    path.write_text("autoencoder:\n  resolution: 64\n  frames: 8\ntrain_autoencoder:\n  lr: 0.5\n")
    cfg = load_config(path)
    assert cfg.autoencoder.channels == 384          # default filled in
    assert cfg.train_autoencoder.lr == 0.5          # the training stages' sections (checked by pvdm_fast.train)


def test_a_typo_is_an_error_not_a_silent_default(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['chanels'\].*autoencoder"):
        load_config("demo", ["autoencoder.chanels=8"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config("demo", ["autoencoder.channels"])


def test_an_unknown_section_is_an_error_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config section\(s\) \['trian_autoencoder'\].*'train_autoencoder'"):
        load_config("demo", ["trian_autoencoder.lr=1"])
    path = tmp_path / "mine.yaml"
    path.write_text("autoencoder:\n  resolution: 64\n  frames: 8\nsampel:\n  steps: 10\n")
    with pytest.raises(ValueError, match=r"\['sampel'\].*known sections: \['autoencoder', 'unet'"):
        load_config(path)


def test_inconsistent_grids_are_rejected():
    with pytest.raises(ValueError, match="latent grid"):
        load_config("demo", ["unet.height=4"])
    with pytest.raises(ValueError, match="data.resolution"):
        load_config("demo", ["data.resolution=64"])
    with pytest.raises(ValueError, match="multiple of"):
        load_config("demo", ["autoencoder.resolution=30", "data.resolution=30"])


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="ucf101-256"):
        load_config("no-such-preset")


def test_build_validates_values():
    with pytest.raises(ValueError):
        build(load_config("demo", ["diffusion.cond_prob=1.5"]), "diffusion")


def test_base_presets_build_the_official_autoencoder_size():
    import torch

    from pvdm_fast.models.autoencoder import Autoencoder

    for name in ("ucf101-256", "sky-256"):
        with torch.device("meta"):  # no memory, no init cost: only the shapes are needed
            model = Autoencoder(build(load_config(name), "autoencoder"))
        assert sum(p.numel() for p in model.parameters()) == 62_064_399, name


def test_demo_preset_trains_an_autoencoder_step_in_well_under_a_second():
    import time

    import torch

    from pvdm_fast.models.autoencoder import Autoencoder

    torch.manual_seed(0)
    cfg = build(load_config("demo"), "autoencoder")
    model = Autoencoder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    video = torch.rand(2, cfg.in_channels, cfg.frames, *cfg.frame_size) * 2 - 1
    times = []
    threads = torch.get_num_threads()
    # one thread and CPU time, not wall time: other jobs on a shared machine then neither count nor
    # make OpenMP threads burn CPU spinning at barriers
    torch.set_num_threads(1)
    try:
        for _ in range(4):
            start = time.process_time()
            loss = 4 * (model(video) - video).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    # about 0.04 s on one core, so 0.5 s means the preset grew far past "trains in seconds"; the first
    # step (lazy imports, allocator warm-up) is left out
    assert sorted(times[1:])[1] < 0.5, times


def test_non_square_autoencoder_grid(tmp_path):
    path = tmp_path / "wide.yaml"
    path.write_text("autoencoder:\n  resolution: [32, 48]\n  patch_size: 8\n  frames: 4\n"
                    "unet:\n  frames: 4\n  height: 4\n  width: 6\n")
    assert build(load_config(path), "autoencoder").grid == (4, 4, 6)
    with pytest.raises(ValueError, match="latent grid"):
        load_config(path, ["unet.width=4"])
    with pytest.raises(ValueError, match="square clips"):
        load_config(path, ["data.resolution=32", "data.frames=4"])
    with pytest.raises(ValueError, match="multiple of"):
        load_config(path, ["autoencoder.resolution=[32,44]", "unet.width=5"])


def test_a_folder_named_like_a_preset_does_not_shadow_it(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config("demo").autoencoder.channels > 0


def test_latent_channels_and_attention_rates_are_checked_with_what_to_set():
    """An autoencoder with 8 latent channels needs a UNet with 8 in and out (it used to fail deep in the
    first training step); attention rates no level reaches were silently ignored."""
    from pvdm_fast.models.unet import UNetConfig

    with pytest.raises(ValueError, match=r"unet.in_channels/out_channels \(4, 4\) must equal autoencoder.embed_dim "
                                         r"\(8\).*unet.in_channels=8 unet.out_channels=8"):
        load_config("tiny", ["autoencoder.embed_dim=8"])
    load_config("tiny", ["autoencoder.embed_dim=8", "unet.in_channels=8", "unet.out_channels=8"])
    with pytest.raises(ValueError, match="in_channels \\(4\\) and out_channels \\(8\\) must be equal"):
        UNetConfig(in_channels=4, out_channels=8).validate()
    with pytest.raises(ValueError, match=r"no level has the down-sampling rate\(s\) \[8\].*the rates are \[1, 2, 4\]"):
        UNetConfig(channel_mult=(1, 2, 2), attention_resolutions=(8, 2)).validate()
    UNetConfig(channel_mult=(1, 2, 2), attention_resolutions=(4, 2)).validate()
    # the same check between loaded models (Pipeline, the diffusion trainer), with the caller's remedy
    from pvdm_fast.models.autoencoder import AutoencoderConfig
    from pvdm_fast.models.unet import check_latents_match

    with pytest.raises(ValueError, match="makes 8-channel latents but the UNet takes 4.*not trained together"):
        check_latents_match(AutoencoderConfig(embed_dim=8), UNetConfig(), "not trained together")
    check_latents_match(AutoencoderConfig(), UNetConfig(), "")
