"""Triplane UNet: official golden vectors, parameter count, sizes, batching of planes, attention maths."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from pvdm_fast.convert import strip_prefixes, unet_from_official
from pvdm_fast.models.unet import TriplaneUNet, UNetConfig
from pvdm_fast.models.unet_blocks import legacy_attention
from tolerances import assert_fp32_close

OFFICIAL_ARGS = ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "num_heads",
                 "use_scale_shift_norm", "resblock_updown", "cond_model")


def tiny(**kw) -> UNetConfig:
    base = dict(frames=8, height=8, width=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(1, 2), num_heads=4)
    base.update(kw)
    return UNetConfig(**base)


def randomized(config: UNetConfig, seed: int = 0, dtype=torch.float64) -> TriplaneUNet:
    """Zero-initialised output convs would hide everything: give every parameter random values."""
    torch.manual_seed(seed)
    model = TriplaneUNet(config).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 16
            p.normal_(0.0, 1.0 / math.sqrt(fan_in))
    return model


def inputs(config: UNetConfig, batch: int = 2, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.latent_length, generator=g, dtype=dtype)
    c = torch.randn(batch, config.in_channels, config.latent_length, generator=g, dtype=dtype)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, t, c


# ---- golden

def test_golden_unet_mc32(golden):
    data = load_file(str(golden / "unet_mc32.safetensors"))
    meta = json.loads((golden / "unet_mc32.json").read_text())
    sd = {k[len("state_dict."):]: v for k, v in data.items() if k.startswith("state_dict.")}
    size, length = meta["image_size"], data["x"].shape[-1]
    frames = (length - size * size) // (2 * size)  # xy is size x size, yt and xt are frames x size
    model = unet_from_official(sd, latent_shape=(frames, size, size), **{k: meta[k] for k in OFFICIAL_ARGS}).eval()
    with torch.no_grad():
        eps_cond = model(data["x"], data["t"], data["cond"])
        eps_uncond = model(data["x"], data["t"])
    assert_fp32_close(eps_cond, data["eps_cond"], "eps_cond", rtol=1e-4)
    assert_fp32_close(eps_uncond, data["eps_uncond"], "eps_uncond", rtol=1e-4)
    assert (data["eps_cond"] - data["eps_uncond"]).abs().max() > 1e-2  # the condition matters


def test_converter_accepts_our_config_and_names_bad_keys(golden):
    data = load_file(str(golden / "unet_mc32.safetensors"))
    meta = json.loads((golden / "unet_mc32.json").read_text())
    sd = strip_prefixes({k[len("state_dict."):]: v for k, v in data.items() if k.startswith("state_dict.")})
    size, length = meta["image_size"], data["x"].shape[-1]
    config = UNetConfig(frames=(length - size * size) // (2 * size), height=size, width=size,
                        **{k: meta[k] for k in OFFICIAL_ARGS})
    unet_from_official(sd, config)
    broken = dict(sd)
    broken.pop("mid_attn.qkv.weight")
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="missing keys: mid_attn.qkv.weight.*unexpected keys: extra.weight"):
        unet_from_official(broken, config)
    with pytest.raises(ValueError, match="shape mismatch"):
        unet_from_official(sd, UNetConfig(**{**config.__dict__, "model_channels": 64}))
    with pytest.raises(ValueError, match="unknown official UNet argument 'chanel_mult'"):
        unet_from_official(sd, latent_shape=config.grid, chanel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="latent_shape"):
        unet_from_official(sd)


def test_base_config_matches_official_parameters():
    with torch.device("meta"):
        model = TriplaneUNet(UNetConfig())
    assert sum(p.numel() for p in model.parameters()) == 528_273_412


def test_base_config_state_dict_matches_official_names_and_shapes(golden):
    shapes = golden.parent / "official_state_dict_shapes.json"
    if not shapes.is_file():
        pytest.skip(f"{shapes} not found")
    official = json.loads(shapes.read_text())["unet"]["state_dict"]
    official = {k[len("diffusion_model."):]: tuple(s) for k, s in official if k != "diffusion_model.zeros"}
    with torch.device("meta"):
        model = TriplaneUNet(UNetConfig())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official


# ---- sizes and shapes

@pytest.mark.parametrize("grid,mult", [((8, 8, 12), (1, 2)), ((32, 4, 4), (1, 2)), ((6, 10, 14), (1, 2)),
                                       ((5, 7, 3), (1,)), ((8, 16, 8), (1, 2, 2))])
def test_any_grid_forward_backward(grid, mult):
    cfg = tiny(frames=grid[0], height=grid[1], width=grid[2], channel_mult=mult,
               attention_resolutions=(1, 2)[:len(mult)])  # rates a level reaches (1 level: rate 1 only)
    model = randomized(cfg, dtype=torch.float32)
    x, t, c = inputs(cfg, dtype=torch.float32)
    x.requires_grad_(True)
    out = model(x, t, c)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_plain_resampling_and_additive_timestep_variants():
    cfg = tiny(resblock_updown=False, use_scale_shift_norm=False)
    model = randomized(cfg, dtype=torch.float32)
    keys = set(model.state_dict())
    # Official names of the non-residual resamplers, and the width of the additive embedding.
    assert "input_blocks.2.0.op.weight" in keys and "output_blocks.1.2.conv.weight" in keys
    assert model.input_blocks[1][0].emb_layers[1].out_features == 32
    x, t, c = inputs(cfg, dtype=torch.float32)
    out = model(x, t, c)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.mean().backward()


def test_grid_that_cannot_be_halved_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cannot be halved 2 times.*height=6 not divisible by 4"):
        TriplaneUNet(tiny(frames=8, height=6, width=8, channel_mult=(1, 2, 2)))
    with pytest.raises(ValueError, match="multiples of 32"):
        TriplaneUNet(tiny(model_channels=48))
    with pytest.raises(ValueError, match="num_head_channels=24 must divide"):
        TriplaneUNet(tiny(num_head_channels=24))
    with pytest.raises(ValueError, match="cannot be split into 5 heads"):
        TriplaneUNet(tiny(num_heads=5))


def test_num_head_channels_sets_heads_per_width():
    model = TriplaneUNet(tiny(num_head_channels=16))
    assert model.input_blocks[1][1].heads == 2 and model.mid_attn.heads == 4  # widths 32 and 64


def test_bad_inputs_are_clear_errors():
    cfg = tiny()
    model = TriplaneUNet(cfg)
    x, t, c = inputs(cfg, dtype=torch.float32)
    with pytest.raises(ValueError, match="x must be"):
        model(x[..., :-1], t)
    with pytest.raises(ValueError, match="cond must have"):
        model(x, t, c[:1])
    with pytest.raises(ValueError, match="cond_model=False"):
        TriplaneUNet(tiny(cond_model=False))(x, t, c)


def test_unconditional_model_has_in_channels_only():
    model = TriplaneUNet(tiny(cond_model=False))
    assert model.input_blocks[0][0].weight.shape[1] == 4
    x, t, _ = inputs(model.config, dtype=torch.float32)
    assert model(x, t).shape == x.shape


# ---- behaviour

def test_equal_planes_batched_equal_separate_calls():
    cfg = tiny(frames=8, height=8, width=8)  # all three planes are 8x8: one batched call per entry
    model = randomized(cfg)
    x, t, c = inputs(cfg)
    batched = model(x, t, c)
    model.batch_equal_planes = False
    separate = model(x, t, c)
    assert batched.abs().max() > 1e-3
    torch.testing.assert_close(batched, separate, rtol=1e-12, atol=1e-12)


def test_none_condition_equals_zero_condition_and_condition_matters():
    cfg = tiny(frames=4)
    model = randomized(cfg)
    x, t, c = inputs(cfg)
    torch.testing.assert_close(model(x, t), model(x, t, torch.zeros_like(x)), rtol=0, atol=0)
    assert (model(x, t, c) - model(x, t)).abs().max() > 1e-3


def test_joint_attention_mixes_planes():
    cfg = tiny(frames=4)
    model = randomized(cfg)
    x, t, c = inputs(cfg)
    y = x.clone()
    y[..., : cfg.height * cfg.width] += 1.0  # change only the xy plane
    diff = (model(x, t, c) - model(y, t, c))[..., cfg.height * cfg.width:]
    assert diff.abs().max() > 1e-4  # yt/xt outputs respond: the planes talk through joint attention


def test_checkpointing_gives_identical_gradients():
    cfg = tiny(frames=4, checkpoint=False)
    model = randomized(cfg, dtype=torch.float64).train()
    x, t, c = inputs(cfg)
    model(x, t, c).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.config.checkpoint = True
    model(x, t, c).square().sum().backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-10, atol=1e-12)


def test_bf16_autocast_stays_close_to_fp32():
    cfg = tiny(frames=4)
    model = randomized(cfg, dtype=torch.float32)
    x, t, c = inputs(cfg, dtype=torch.float32)
    ref = model(x, t, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t, c)
    assert torch.isfinite(low).all()
    rel = (low.float() - ref).abs().max() / ref.abs().max()
    assert rel < 0.1, rel


def test_timestep_changes_output():
    cfg = tiny(frames=4)
    model = randomized(cfg)
    x, _, c = inputs(cfg)
    assert (model(x, torch.tensor([3, 3]), c) - model(x, torch.tensor([900, 900]), c)).abs().max() > 1e-4
    torch.testing.assert_close(model(x, 7, c), model(x, torch.tensor([7, 7]), c))


def test_legacy_attention_equals_official_formula_float64():
    g = torch.Generator().manual_seed(0)
    b, heads, ch, length = 2, 3, 5, 17
    qkv = torch.randn(b, heads * 3 * ch, length, generator=g, dtype=torch.float64)
    # Official: split heads first, then [q, k, v] per head; q and k each scaled by ch^-1/4.
    q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    scale = ch ** -0.25
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    expected = torch.einsum("bts,bcs->bct", w, v).reshape(b, heads * ch, length)
    got = legacy_attention(qkv.transpose(1, 2), heads).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_attention_float64():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 6, 2 * 3 * 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: legacy_attention(a, 2), (qkv,))


def test_pvdm_convert_cli_round_trip(golden, tmp_path, monkeypatch, capsys):
    """`pvdm convert --kind unet` on an official-style .pth writes its weights and config.

    The preset machinery is replaced by a stub returning the golden configuration, so this checks the
    conversion path itself (prefixes, strict load, stored config) whatever presets exist.
    """
    import sys
    import types

    from omegaconf import OmegaConf

    from pvdm_fast.cli import main
    from pvdm_fast.models.io import load_weights

    data = load_file(str(golden / "unet_mc32.safetensors"))
    meta = json.loads((golden / "unet_mc32.json").read_text())
    size, length = meta["image_size"], data["x"].shape[-1]
    unet = {k: meta[k] for k in OFFICIAL_ARGS}
    unet.update(frames=(length - size * size) // (2 * size), height=size, width=size)
    seen = {}

    def load_config(name, overrides=(), consistent=True):
        seen["args"] = (name, list(overrides))
        seen["consistent"] = consistent
        return OmegaConf.create({"unet": unet, "diffusion": {"cond_prob": 0.2}})

    monkeypatch.setitem(sys.modules, "pvdm_fast.configs", types.SimpleNamespace(load_config=load_config))
    official = {"module." + k[len("state_dict."):]: v for k, v in data.items() if k.startswith("state_dict.")}
    torch.save(official, tmp_path / "ema.pth")
    dest = tmp_path / "unet.safetensors"
    assert main(["convert", str(tmp_path / "ema.pth"), str(dest), "unet.dropout=0.0", "--kind", "unet",
                 "--config", "golden"]) == 0
    assert seen["args"] == ("golden", ["unet.dropout=0.0"]) and seen["consistent"] is False
    sd, kind, config = load_weights(dest)
    assert kind == "unet" and config["diffusion"]["cond_prob"] == 0.2
    assert UNetConfig(**config["unet"]) == UNetConfig(**unet)
    # Same tensors as the official file (minus the fixed-size `zeros` buffer); that these weights
    # reproduce the official outputs is test_golden_unet_mc32's job.
    expected = {k[len("module.diffusion_model."):]: v for k, v in official.items() if not k.endswith(".zeros")}
    assert sd.keys() == expected.keys()
    assert all(torch.equal(sd[k], expected[k]) for k in sd)
    assert main(["convert", str(tmp_path / "missing.pth"), str(dest), "--kind", "unet"]) == 2
    assert "no checkpoint file" in capsys.readouterr().err
