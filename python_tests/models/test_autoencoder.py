"""The autoencoder: golden outputs of the official implementation, every size from the config."""
import dataclasses
import json

import pytest
import torch

from pvdm_fast.convert import autoencoder_from_official
from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
from pvdm_fast.models.io import load_weights, save_weights
from pvdm_fast.models.layers import AxisTransformer, SpaceRotary, TimeRotary

GOLDEN = "ae_r32_t16_c32"
CONFIG_KEYS = [f.name for f in dataclasses.fields(AutoencoderConfig)]


def tiny(**kw) -> AutoencoderConfig:
    base = dict(resolution=16, frames=4, patch_size=4, channels=16, encoder_depth=1, decoder_depth=1, heads=2,
                dim_head=8, axis_depth=2, axis_heads=2, axis_mlp_dim=24)
    base.update(kw)
    return AutoencoderConfig(**base)


@pytest.fixture(scope="module")
def golden_ae():
    from conftest import golden_dir
    from safetensors.torch import load_file

    d = golden_dir()
    if not d.is_dir():
        pytest.skip(f"golden vectors not found at {d} (set PVDM_GOLDEN_DIR)")
    tensors = load_file(str(d / f"{GOLDEN}.safetensors"))
    meta = json.loads((d / f"{GOLDEN}.json").read_text())
    sd = {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    cfg = AutoencoderConfig(**{k: meta[k] for k in CONFIG_KEYS if k in meta})
    return tensors, sd, cfg


def test_golden_official_outputs_in_float64(golden_ae):
    tensors, sd, cfg = golden_ae
    model = autoencoder_from_official(sd, cfg).double().eval()  # the contract's (state_dict, config) form
    with torch.no_grad():
        latent = model.encode(tensors["input"])
        decoded = model.decode(tensors["latent"])
        recon = model(tensors["input"])
    assert (latent - tensors["latent"]).abs().max() < 1e-6
    assert (decoded - tensors["decoded_from_latent"]).abs().max() < 1e-6
    assert (recon - tensors["recon"]).abs().max() < 1e-6


def test_golden_in_float32_within_float32_rounding(golden_ae):
    tensors, sd, cfg = golden_ae
    model = autoencoder_from_official(sd, cfg.resolution, cfg.frames).eval()  # sizes inferred
    with torch.no_grad():
        recon = model(tensors["input"].float())
    assert (recon.double() - tensors["recon"]).abs().max() < 1e-4


def test_converter_is_strict_and_names_the_keys(golden_ae):
    _, sd, cfg = golden_ae
    missing = {k: v for k, v in sd.items() if k != "post_xt.bias"}
    with pytest.raises(ValueError, match="missing keys: post_xt.bias"):
        autoencoder_from_official(missing)
    extra = dict(sd, **{"encoder.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected keys: encoder.extra"):
        autoencoder_from_official(extra)
    wrong = dataclasses.replace(cfg, frames=8)  # position embedding of the xy axis no longer fits
    with pytest.raises(ValueError, match="xy_pos_embedding"):
        autoencoder_from_official(sd, config=wrong)
    with pytest.raises(ValueError, match="frames=8 disagrees"):
        autoencoder_from_official(sd, frames=8)
    with pytest.raises(ValueError, match="resolution=64 disagrees"):
        autoencoder_from_official(sd, resolution=64)
    with pytest.raises(ValueError, match="not an official PVDM autoencoder"):
        autoencoder_from_official({"foo": torch.zeros(1)})
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    assert autoencoder_from_official(wrapped).config == cfg  # wrapper and DDP prefix accepted, sizes read


def test_official_pth_file_is_read_with_weights_only(golden_ae, tmp_path):
    _, sd, cfg = golden_ae
    path = tmp_path / "ae.pth"
    torch.save({"state_dict": sd}, path)
    assert autoencoder_from_official(path, 32, 16).config == cfg
    with pytest.raises(FileNotFoundError):
        autoencoder_from_official(tmp_path / "missing.pth")


def test_stored_rotary_buffers_equal_the_formula(golden_ae):
    _, sd, cfg = golden_ae
    torch.testing.assert_close(TimeRotary(cfg.dim_head).inv_freqs, sd["encoder.frame_rot_emb.inv_freqs"])
    torch.testing.assert_close(SpaceRotary(cfg.dim_head).scales, sd["encoder.image_rot_emb.scales"])


def test_rotary_rotates_adjacent_pairs_as_the_spec_writes():
    from pvdm_fast.models.layers import apply_rotary, rotary_tables

    angles = torch.rand(5, 8, dtype=torch.float64) * 6
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    out = apply_rotary(x, rotary_tables(angles, torch.float64))
    c, s = angles.cos(), angles.sin()
    want = torch.empty_like(x)
    want[..., 0::2] = x[..., 0::2] * c[..., 0::2] - x[..., 1::2] * s[..., 0::2]
    want[..., 1::2] = x[..., 1::2] * c[..., 1::2] + x[..., 0::2] * s[..., 1::2]
    torch.testing.assert_close(out, want)


def test_time_rotary_layout_has_the_duplicated_frequency_quirk():
    rot = TimeRotary(8)
    a = rot.angles(3)
    inv = rot.inv_freqs.double()
    assert torch.equal(a[2], torch.cat([2 * inv, 2 * inv]))
    # adjacent pair (0, 1) rotates with two different frequencies: that is the official meaning
    assert a[1, 0] != a[1, 1]


@pytest.mark.parametrize("cfg", [
    tiny(resolution=128, patch_size=4, frames=2, channels=8, heads=1, dim_head=8, axis_heads=1),
    tiny(frames=8),
    tiny(frames=32, resolution=8),
    tiny(resolution=[12, 20], frames=3),      # non-square frames: h=3, w=5
], ids=["res128-patch4", "frames8", "frames32", "non-square"])
def test_any_size_from_the_config(cfg):
    torch.manual_seed(0)
    model = Autoencoder(cfg).eval()
    t, h, w = cfg.grid
    hh, ww = cfg.frame_size
    video = torch.rand(2, 3, cfg.frames, hh, ww) * 2 - 1
    with torch.no_grad():
        latent = model.encode(video)
        assert latent.shape == (2, cfg.embed_dim, h * w + t * w + t * h)
        assert latent.abs().max() < 1
        out = model.decode(latent)
        assert out.shape == video.shape
        assert out.abs().max() <= 1
    model.train()
    recon = model(video)
    torch.testing.assert_close(recon.detach(), out)
    (4 * (recon - video).abs().mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # the loss reaches the first layer through the projections, tanh and the broadcast sum
    assert model.encoder.to_patch_embedding.weight.grad.abs().sum() > 0


def test_batch_elements_are_independent():
    torch.manual_seed(0)
    model = Autoencoder(tiny()).eval()
    video = torch.rand(3, 3, 4, 16, 16) * 2 - 1
    with torch.no_grad():
        together = model.encode(video)
        alone = torch.cat([model.encode(v[None]) for v in video])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_bad_shapes_are_value_errors_that_state_the_expected_shape():
    model = Autoencoder(tiny())
    with pytest.raises(ValueError, match=r"\(B, 3, 4, 16, 16\)"):
        model.encode(torch.zeros(1, 3, 5, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 4, 48\)"):
        model.decode(torch.zeros(1, 4, 47))
    with pytest.raises(ValueError, match="patch_size"):
        Autoencoder(tiny(resolution=18))


def test_axis_transformer_first_output_equals_the_full_computation():
    torch.manual_seed(0)
    tr = AxisTransformer(16, depth=3, heads=2, dim_head=8, mlp_dim=32).double()
    x = torch.randn(5, 7, 16, dtype=torch.float64)
    full = x
    for attn, ff in tr.layers:
        full = full + attn.fn(attn.norm(full))
        full = full + ff.fn(ff.norm(full))
    torch.testing.assert_close(tr.first_output(x), full[:, 0])


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = Autoencoder(tiny())
    ckpt = Autoencoder(tiny(checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    video = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    grads = []
    for m in (plain, ckpt):
        m.train()
        m.zero_grad()
        m(video).square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-7, msg=k)
    assert all(g.abs().sum() > 0 for k, g in grads[0].items() if "pos_embedding" not in k), "a parameter got no gradient"


def test_weights_round_trip_with_config(tmp_path):
    torch.manual_seed(0)
    model = Autoencoder(tiny(resolution=[12, 20]))
    save_weights(tmp_path / "ae.safetensors", model.state_dict(), "autoencoder",
                 {"autoencoder": dataclasses.asdict(model.config)})
    sd, kind, cfg = load_weights(tmp_path / "ae.safetensors")
    assert kind == "autoencoder"
    again = Autoencoder(AutoencoderConfig(**cfg["autoencoder"]))
    again.load_state_dict(sd, strict=True)
    video = torch.rand(1, 3, 4, 12, 20) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(video), again(video))


def test_unreadable_weight_files_are_value_errors_that_say_what_they_are(tmp_path):
    """A .pth, a truncated or an empty file given where pvdm_fast weights are expected: a ValueError
    naming the file and what to do (they were safetensors' own errors: tracebacks from the CLI)."""
    from pvdm_fast import cli
    from pvdm_fast.convert import read_official

    model = Autoencoder(tiny())
    good = tmp_path / "ae.safetensors"
    save_weights(good, model.state_dict(), "autoencoder", {"autoencoder": dataclasses.asdict(model.config)})
    data = good.read_bytes()
    cases = {"ae.pth": None, "cut_header.safetensors": data[:6], "cut_body.safetensors": data[:len(data) // 2],
             "empty.safetensors": b"", "text.safetensors": b"hello, this is not a weights file\n"}
    torch.save(model.state_dict(), tmp_path / "ae.pth")
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    expect = {"ae.pth": "PyTorch checkpoint", "cut_header.safetensors": "empty or truncated",
              "cut_body.safetensors": "damaged|truncated", "empty.safetensors": "empty or truncated",
              "text.safetensors": "truncated or not safetensors"}
    for name, pattern in expect.items():
        with pytest.raises(ValueError, match=pattern) as info:
            load_weights(tmp_path / name)
        assert name in str(info.value)
    # official checkpoints: a text file, a truncated .pth, a tensor instead of a state dict
    (tmp_path / "text.pth").write_text("not a checkpoint")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "ae.pth").read_bytes()[:1000])
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    for name, pattern in (("text.pth", "not a readable checkpoint"), ("cut.pth", "not a readable checkpoint"),
                          ("tensor.pth", "holds a Tensor")):
        with pytest.raises(ValueError, match=pattern):
            read_official(tmp_path / name)
    # a file torch.load(weights_only=True) refuses is named as such, with torch's reason
    import argparse
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1)}, tmp_path / "objects.pth")
    with pytest.raises(ValueError, match="weights_only=True\\) refused it .*Namespace"):
        read_official(tmp_path / "objects.pth")
    # a device that cannot take the tensors is not called a damaged file
    if not torch.cuda.is_available():
        with pytest.raises(Exception) as info:
            load_weights(good, device="cuda")
        assert "damaged" not in str(info.value)
    # through the CLI: exit status 2 with the message, no traceback
    assert cli.main(["convert", "--kind", "autoencoder", str(tmp_path / "text.pth"),
                     str(tmp_path / "out.safetensors")]) == 2
    assert cli.main(["encode", "--autoencoder", str(tmp_path / "ae.pth"), "--data", "synthetic:2",
                     "--out", str(tmp_path / "latents")]) == 2


def test_base_config_parameter_count_is_the_papers():
    with torch.device("meta"):
        model = Autoencoder(AutoencoderConfig())
    n = sum(p.numel() for p in model.parameters())
    assert n == 62_064_399


def test_base_config_state_dict_has_the_official_names_and_shapes(golden):
    from pvdm_fast.convert import autoencoder_config_from_official

    shapes = golden.parent / "official_state_dict_shapes.json"
    if not shapes.is_file():
        pytest.skip(f"{shapes} not found")
    official = {k: tuple(s) for k, s in json.loads(shapes.read_text())["autoencoder"]["state_dict"]}
    official.pop("coords")  # registered but never read by the official model; not loaded
    with torch.device("meta"):
        model = Autoencoder(AutoencoderConfig())
        sd = {k: torch.empty(s) for k, s in official.items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official
    # every size of the base config is recovered from the official shapes alone
    base = AutoencoderConfig()
    inferred = autoencoder_config_from_official(sd, 256, 16)
    assert inferred == dataclasses.replace(base, axis_dim_head=base.axis_head_dim)  # None resolved to C/8


def test_rotary_complex_and_real_forms_agree():
    """The complex forms (alpha z + beta conj z, and alpha z when pairs share an angle) against the
    real flip form, forward and backward, on float32 and float64; odd strides and bf16 take the real
    form and still rotate."""
    from pvdm_fast.models.layers import apply_rotary, rotary_tables

    torch.manual_seed(0)
    general = torch.rand(5, 6, 8, dtype=torch.float64) * 6
    shared = (torch.rand(5, 6, 4, dtype=torch.float64) * 6).repeat_interleave(2, dim=-1)
    for angles, is_shared in ((general, False), (shared, True), (shared, False)):
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            table = rotary_tables(angles, dtype, shared_pairs=is_shared)
            assert table.alpha is not None and (table.beta is None) == is_shared
            x = torch.randn(3, 5, 6, 8, dtype=dtype, requires_grad=True)
            g = torch.randn(3, 5, 6, 8, dtype=dtype)
            out = apply_rotary(x, table)
            want = apply_rotary(x, table[:2])  # the real form
            torch.testing.assert_close(out, want, rtol=tol, atol=tol)
            (gx,) = torch.autograd.grad(out, x, g)
            (gw,) = torch.autograd.grad(want, x, g)
            torch.testing.assert_close(gx, gw, rtol=tol, atol=tol)
    # an odd storage offset cannot be viewed as complex: the real form runs
    table = rotary_tables(general, torch.float64)
    base = torch.randn(3 * 5 * 6 * 8 + 1, dtype=torch.float64)
    odd = base[1:].view(3, 5, 6, 8)
    torch.testing.assert_close(apply_rotary(odd, table), apply_rotary(odd.clone(), table[:2]))
    bf = torch.randn(3, 5, 6, 8, dtype=torch.bfloat16)
    table_bf = rotary_tables(general, torch.bfloat16)
    assert table_bf.alpha is None
    torch.testing.assert_close(apply_rotary(bf, table_bf).double(),
                               apply_rotary(bf.double(), rotary_tables(general, torch.float64)), rtol=0.02, atol=0.05)


def test_gradcheck_of_the_small_pieces_in_float64():
    from pvdm_fast.models.layers import apply_rotary, rotary_tables

    torch.manual_seed(0)
    table = rotary_tables(SpaceRotary(8).angles(2, 3), torch.float64)
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: apply_rotary(v, table), (x,))

    tr = AxisTransformer(8, depth=2, heads=2, dim_head=4, mlp_dim=12).double()
    seq = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tr.first_output, (seq,))

    # a 2 x 2 x 2 grid keeps the latent (and so the number of gradcheck columns) small
    model = Autoencoder(tiny(resolution=8, frames=2, channels=8, heads=1, dim_head=8, axis_heads=1)).double()
    latent = torch.rand(1, 4, model.config.latent_length, dtype=torch.float64, requires_grad=True) * 0.5
    latent = latent.detach().requires_grad_(True)
    decode_input = lambda z: model.decode(z).sum(dim=(1, 2))  # noqa: E731
    # fast mode checks random projections of the Jacobian: one backward instead of one per output
    assert torch.autograd.gradcheck(decode_input, (latent,), atol=1e-6, fast_mode=True)


def test_bf16_autocast_forward_and_backward():
    torch.manual_seed(0)
    model = Autoencoder(tiny())
    video = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = model(video)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(video)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_pvdm_convert_writes_a_loadable_checkpoint_with_sizes_from_the_weights(golden_ae, tmp_path):
    from pvdm_fast import cli

    tensors, sd, cfg = golden_ae
    src = tmp_path / "official.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, src)
    dest = tmp_path / "ae.safetensors"
    assert cli.main(["convert", "--kind", "autoencoder", str(src), str(dest)]) == 0
    weights, kind, stored = load_weights(dest)
    assert kind == "autoencoder"
    model = Autoencoder(AutoencoderConfig(**stored["autoencoder"]))
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        latent = model.double().encode(tensors["input"][:1])
    assert (latent - tensors["latent"][:1]).abs().max() < 1e-6
