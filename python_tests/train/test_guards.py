"""Training guards and schedules: discriminators idle before gan_start_step, non-finite losses stop
or skip, the warm-up is applied, the EMA follows its interval."""

import pytest
import torch
from omegaconf import OmegaConf

from pvdm_fast.train import distributed as D
from pvdm_fast.train.autoencoder_trainer import AutoencoderTrainer
from pvdm_fast.train.checkpoint import load_checkpoint
from pvdm_fast.train.diffusion_trainer import DiffusionTrainer
from pvdm_fast.train.loop import NonFiniteLossError

CPU = D.DistContext(0, 1, 0, torch.device("cpu"))


def _cfg(path):
    return OmegaConf.load(path)


def _ae(tiny_config, run_dir, **train):
    return AutoencoderTrainer(_cfg(tiny_config(train_autoencoder=train)), run_dir, data="synthetic:6", ctx=CPU,
                              progress=False)


def _dm(tiny_config, run_dir, ae_file, **train):
    return DiffusionTrainer(_cfg(tiny_config(train_diffusion=train)), run_dir, autoencoder=ae_file,
                            data="synthetic:6", ctx=CPU, progress=False)


def test_discriminators_idle_before_gan_start(tmp_path, tiny_config):
    trainer = _ae(tiny_config, tmp_path / "run", gan_start_step=2, total_clips=8)  # 2 steps: both before
    calls = []
    original_build = trainer.build

    def build():
        original_build()
        trainer.initial = {k: v.clone() for k, v in trainer.disc.state_dict().items()}
        for m in trainer.disc.modules():
            m.register_forward_hook(lambda *a: calls.append(1))

    trainer.build = build
    trainer.run()
    assert calls == []
    assert all(torch.equal(v, trainer.initial[k]) for k, v in trainer.disc.state_dict().items())
    assert trainer.d.optimizer.state_dict()["state"] == {}
    # Two more steps cross gan_start_step: now they run and move.
    more = AutoencoderTrainer(_cfg(tiny_config(train_autoencoder={"gan_start_step": 2, "total_clips": 16})),
                              tmp_path / "run", data="synthetic:6", ctx=CPU, resume=True, progress=False)
    more.run()
    assert any(not torch.equal(v, trainer.initial[k]) for k, v in more.disc.state_dict().items())
    # alternating from step 2: the autoencoder's step with the GAN terms, then the discriminators' (whose
    # row also carries the autoencoder's latest metrics)
    assert "ae/g_adv" in more.history[-2] and "disc/loss" not in more.history[-2]
    assert "ae/g_adv" in more.history[-1] and "disc/loss" in more.history[-1]


@pytest.mark.parametrize("alternate", [True, False])
def test_gan_stage_alternates_autoencoder_and_discriminator_steps(tmp_path, tiny_config, alternate):
    """As officially (tools/trainer.py toggles every accumulated step from disc_start): the autoencoder
    moves on even GAN-stage steps, the discriminators on odd ones, on reconstructions by the current
    autoencoder; gan_alternate=false moves both every step."""
    trainer = _ae(tiny_config, tmp_path / "run", gan_start_step=1, total_clips=20, gan_alternate=alternate)
    moved = []
    original_build = trainer.build

    def build():
        original_build()
        state = lambda m: {k: v.detach().clone() for k, v in m.named_parameters()}  # noqa: E731 (not BN stats)
        before = {"ae": state(trainer.model), "disc": state(trainer.disc)}
        step = trainer.train_step

        def recording_step(batches):
            out = step(batches)
            now = {"ae": state(trainer.model), "disc": state(trainer.disc)}
            moved.append({k for k in now if any(not torch.equal(now[k][n], before[k][n]) for n in now[k])})
            before.update(now)
            return out

        trainer.train_step = recording_step

    trainer.build = build
    trainer.run()
    if alternate:
        assert moved == [{"ae"}, {"ae"}, {"disc"}, {"ae"}, {"disc"}]
    else:
        assert moved == [{"ae"}] + [{"ae", "disc"}] * 4


def test_each_discriminator_is_clipped_on_its_own(tmp_path, tiny_config):
    """As officially (clip_grad_norm_ per discriminator): with a tiny max norm both the frame and the
    clip discriminator step with gradient norm exactly max norm; one joint norm would leave each below."""
    trainer = _ae(tiny_config, tmp_path / "run", gan_start_step=0, total_clips=16, disc_max_grad_norm=1e-4)
    norms = []
    original_build = trainer.build

    def build():
        original_build()
        step = trainer.d.optimizer.step

        def recording_step(*args, **kwargs):
            norms.append([torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters()])).item()
                          for m in (trainer.disc.frame, trainer.disc.clip)])
            return step(*args, **kwargs)

        trainer.d.optimizer.step = recording_step

    trainer.build = build
    trainer.run()
    assert len(norms) == 2  # 4 steps, alternating: steps 1 and 3 are the discriminators'
    for frame, clip in norms:
        assert frame == pytest.approx(1e-4, rel=1e-3) and clip == pytest.approx(1e-4, rel=1e-3)
    assert trainer.history[-1]["disc/grad_norm_frame"] > 1e-4 and trainer.history[-1]["disc/grad_norm_clip"] > 1e-4


def _poison_at(trainer, step):
    original_build = trainer.build

    def build():
        original_build()
        trainer.model.register_forward_hook(
            lambda m, i, out: out * float("nan") if trainer.step == step and torch.is_grad_enabled() else None)

    trainer.build = build


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_config, tiny_autoencoder):
    run = tmp_path / "run"
    trainer = _dm(tiny_config, run, tiny_autoencoder, checkpoint_every=2)
    _poison_at(trainer, 2)  # the third step (0-based index 2) sees a NaN loss
    with pytest.raises(NonFiniteLossError, match=r"unet loss is nan at step 2.*step-00000002.*Resume with --resume"):
        trainer.run()
    ckpt = load_checkpoint(run)
    assert ckpt.step == 2
    saved = ckpt.weights("unet")[0]
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())  # no update after it


def test_nonfinite_loss_before_any_checkpoint_says_to_start_again(tmp_path, tiny_config, tiny_autoencoder):
    run = tmp_path / "run"
    trainer = _dm(tiny_config, run, tiny_autoencoder)
    _poison_at(trainer, 1)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    message = str(info.value)
    # --resume would only fail with "holds no checkpoint yet"
    assert "no checkpoint was written yet" in message and "--resume" not in message
    assert f"Start the run again (the same --out {run})" in message


def test_the_other_stages_section_is_checked_too(tmp_path, tiny_config, tiny_autoencoder, capsys):
    from pvdm_fast.cli import main

    # an autoencoder run refuses a bad train_diffusion value, and the other way round
    with pytest.raises(ValueError, match=r"bad value in section train_diffusion"):
        AutoencoderTrainer(_cfg(tiny_config(train_diffusion={"lr": "abc"})), tmp_path / "a", data="synthetic:6",
                           ctx=CPU)
    with pytest.raises(ValueError, match=r"unknown key\(s\) lrr in section train_autoencoder"):
        DiffusionTrainer(_cfg(tiny_config(train_autoencoder={"lrr": 1})), tmp_path / "d",
                         autoencoder=tiny_autoencoder, data="synthetic:6", ctx=CPU)
    code = main(["train-autoencoder", "--config", str(tiny_config()), "--data", "synthetic:6", "--out",
                 str(tmp_path / "cli"), "--no-progress", "train_diffusion.lr=abc"])
    assert code == 2 and "train_diffusion" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_skipped_steps_are_reported_at_the_end(capsys):
    from pvdm_fast.train.commands import _report

    assert _report({"interrupted": None, "exported": [], "step": 10, "skipped_steps": 9}) == 0
    assert "warning: 9 of 10 optimizer steps were skipped" in capsys.readouterr().err
    assert _report({"interrupted": None, "exported": [], "step": 10, "skipped_steps": 0}) == 0
    assert "warning" not in capsys.readouterr().err


def test_nonfinite_loss_skipped_when_asked(tmp_path, tiny_config, tiny_autoencoder):
    trainer = _dm(tiny_config, tmp_path / "run", tiny_autoencoder, skip_nonfinite=True)
    _poison_at(trainer, 1)
    summary = trainer.run()
    assert summary["step"] == 4 and summary["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert [h.get("unet/skipped", 0.0) for h in trainer.history] == [0.0, 1.0, 0.0, 0.0]


def test_warmup_scales_the_first_updates(tmp_path, tiny_config, tiny_autoencoder):
    def first_update(warmup):
        trainer = _dm(tiny_config, tmp_path / f"w{warmup}", tiny_autoencoder, warmup_steps=warmup, total_clips=4,
                      ema_decay=0.0)
        original_build = trainer.build

        def build():
            original_build()
            trainer.start = {k: v.clone() for k, v in trainer.model.state_dict().items()}

        trainer.build = build
        trainer.run()
        return trainer, max((v - trainer.start[k]).abs().max().item() for k, v in trainer.model.state_dict().items())

    t10, moved10 = first_update(10)
    t1, moved1 = first_update(0)
    assert t10.history[0]["unet/lr"] == pytest.approx(1e-3 / 10)
    assert t1.history[0]["unet/lr"] == pytest.approx(1e-3)
    # Adam's first step moves each weight by about lr: a 10x smaller rate, a ~10x smaller move.
    assert moved10 == pytest.approx(moved1 / 10, rel=0.05)


def test_ema_follows_its_interval(tmp_path, tiny_config, tiny_autoencoder):
    """Updates every ema_every steps with LitEma's warm-up decay min(ema_decay, (1+k)/(10+k)) at update
    k, k counted across resumes (it lives in the training state)."""
    trainer = _dm(tiny_config, tmp_path / "run", tiny_autoencoder, ema_decay=0.5, ema_every=3, total_clips=8)
    original_build = trainer.build

    def build():
        original_build()
        trainer.initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer.build = build
    trainer.run()  # 2 steps < 3: the EMA still holds the initial weights
    ema2 = load_checkpoint(tmp_path / "run").weights("ema")[0]
    assert all(torch.equal(ema2[k], v) for k, v in trainer.initial.items())
    more = _dm(tiny_config, tmp_path / "run", tiny_autoencoder, ema_decay=0.5, ema_every=3, total_clips=12)
    more.resume = True
    more.run()  # step 3: update 1, decay 2/11, of the initial weights and the weights after step 3
    ema3 = {k: v.clone() for k, v in more.ema.state_dict().items()}
    moved = False
    for k, v in more.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(ema3[k], 2 / 11 * trainer.initial[k] + 9 / 11 * v, atol=1e-6), k
            moved |= not torch.equal(v, trainer.initial[k])
    assert moved
    last = _dm(tiny_config, tmp_path / "run", tiny_autoencoder, ema_decay=0.5, ema_every=3, total_clips=24)
    last.resume = True
    last.run()  # step 6: update 2 (not 1 again), decay 3/12
    assert last.ema.updates == 2
    for k, v in last.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(last.ema.state_dict()[k], 0.25 * ema3[k] + 0.75 * v, atol=1e-6), k


def test_lpips_term_from_a_user_file_or_off_with_a_warning(tmp_path, tiny_config):
    from pvdm_fast.models.lpips import LPIPS

    torch.manual_seed(0)
    weights = tmp_path / "lpips.pth"
    sd = LPIPS().state_dict()
    # Real LPIPS heads are non-negative (a distance); random ones need not be.
    torch.save({k: v.abs() if k.startswith("lin") else v for k, v in sd.items()}, weights)
    trainer = _ae(tiny_config, tmp_path / "on", lpips_weight=4.0, lpips_weights=str(weights), total_clips=4,
                  gan_start_step=-1)
    trainer.run()
    assert trainer.history[-1]["ae/lpips"] > 0
    assert trainer.history[-1]["ae/loss"] == pytest.approx(
        4 * trainer.history[-1]["ae/l1"] + 4 * trainer.history[-1]["ae/lpips"], rel=1e-5)
    off = _ae(tiny_config, tmp_path / "off", lpips_weight=4.0, total_clips=4, gan_start_step=-1)
    with pytest.warns(RuntimeWarning, match="without the LPIPS"):
        off.run()
    assert "ae/lpips" not in off.history[-1]


def test_l2_term_is_added_when_asked_and_both_weights_zero_is_refused(tmp_path, tiny_config):
    trainer = _ae(tiny_config, tmp_path / "l2", l1_weight=1.0, l2_weight=3.0, total_clips=4, gan_start_step=-1)
    trainer.run()
    last = trainer.history[-1]
    assert last["ae/l2"] > 0
    assert last["ae/loss"] == pytest.approx(last["ae/l1"] + 3 * last["ae/l2"], rel=1e-5)
    plain = _ae(tiny_config, tmp_path / "plain", total_clips=4, gan_start_step=-1)
    plain.run()
    assert "ae/l2" not in plain.history[-1]  # off by default, as officially
    with pytest.raises(ValueError, match="l1_weight and l2_weight"):
        _ae(tiny_config, tmp_path / "none", l1_weight=0.0, l2_weight=0.0)


def test_bf16_autocast_and_compile_paths_train(tmp_path, tiny_config, tiny_autoencoder, monkeypatch):
    """precision=bf16 (CPU autocast here; the GPU default) keeps fp32 weights and finite losses in both
    stages; compile=true goes through torch.compile (aot_eager here: dynamo tracing and AOT autograd of
    our models without minutes of C++ codegen on a 2-core CI) and matches the eager losses."""
    ae = _ae(tiny_config, tmp_path / "ae_bf16", precision="bf16", total_clips=8, gan_start_step=-1)
    assert ae.dtype == torch.bfloat16
    ae.run()
    assert all(torch.isfinite(torch.tensor(h["ae/loss"])) for h in ae.history)
    assert all(p.dtype == torch.float32 for p in ae.model.parameters())
    dm = _dm(tiny_config, tmp_path / "dm_bf16", tiny_autoencoder, precision="bf16", total_clips=8)
    dm.run()
    assert all(torch.isfinite(torch.tensor(h["unet/loss"])) for h in dm.history)

    real_compile = torch.compile
    calls = []

    def compile_aot_eager(module, **kwargs):
        calls.append(type(module).__name__)
        return real_compile(module, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    eager = _dm(tiny_config, tmp_path / "dm_eager", tiny_autoencoder, total_clips=8)
    eager.run()
    compiled = _dm(tiny_config, tmp_path / "dm_compiled", tiny_autoencoder, total_clips=8, compile=True)
    compiled.run()
    assert calls, "compile=true did not call torch.compile"
    for a, b in zip(eager.history, compiled.history):
        assert a["unet/loss"] == pytest.approx(b["unet/loss"], rel=1e-4, abs=1e-6)


def test_gan_stage_logs_both_parts_and_each_schedule_ends_at_its_last_update(tmp_path, tiny_config):
    """Alternating steps, logged every 2 steps: both parts' metrics in every row (one parity only would
    hide one of them for the whole GAN stage). A linear decay to 0 reaches 0 at each optimizer's own last
    update (the autoencoder makes fewer updates than steps, the discriminators fewer still)."""
    trainer = _ae(tiny_config, tmp_path / "run", gan_start_step=2, total_clips=40, log_every=2,
                  lr_decay="linear", min_lr_ratio=0.0, lr=1e-3, disc_lr=1e-3)
    seen = {"ae": [], "disc": []}
    original_build = trainer.build

    def build():
        original_build()
        for name, part in (("ae", trainer.g), ("disc", trainer.d)):
            step = part.optimizer.step

            def recording_step(*args, _step=step, _name=name, _opt=part.optimizer, **kwargs):
                seen[_name].append(_opt.param_groups[0]["lr"])
                return _step(*args, **kwargs)

            part.optimizer.step = recording_step

    trainer.build = build
    trainer.run()  # 10 steps: the autoencoder updates at 0-2, 4, 6, 8; the discriminators at 3, 5, 7, 9
    assert trainer.part_updates("ae") == len(seen["ae"]) == 6 and trainer.part_updates("disc") == len(seen["disc"]) == 4
    assert seen["ae"][0] == pytest.approx(1e-3) and seen["ae"][-1] == 0.0
    assert seen["disc"][0] == pytest.approx(1e-3) and seen["disc"][-1] == 0.0
    rows = [h for h in trainer.history if h["step"] > 3]
    assert rows and all("ae/loss" in h and "disc/loss" in h for h in rows)


def test_autoencoder_ema_averages_only_after_autoencoder_updates(tmp_path, tiny_config):
    trainer = _ae(tiny_config, tmp_path / "run", gan_start_step=1, total_clips=20, ema_decay=0.9, ema_every=1)
    trainer.run()  # 5 steps: the autoencoder updates at 0, 1, 3; the discriminators at 2, 4
    assert trainer.ema.updates == 3


def test_export_without_any_ema_average_writes_the_trained_weights(tmp_path, tiny_config, tiny_autoencoder, capsys):
    """ema_every longer than the run: the shadow is still the initialisation; the export must not be."""
    from pvdm_fast.models.io import load_weights

    trainer = _dm(tiny_config, tmp_path / "run", tiny_autoencoder, ema_decay=0.9999, ema_every=100, total_clips=8)
    trainer.run()
    assert trainer.ema.updates == 0
    exported = load_weights(tmp_path / "run" / "diffusion.safetensors")[0]
    trained = trainer.model.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in trained.items())
    assert "EMA never averaged" in capsys.readouterr().out


def test_too_few_items_for_the_processes_is_a_clear_error():
    from pvdm_fast.train.data import batch_stream

    with pytest.raises(ValueError, match="1 item.*fewer than the 2 processes"):
        batch_stream([{"x": 0}], 1, rank=1, world_size=2, seed=0, skip=0, num_workers=0, device=torch.device("cpu"))


def test_an_unconditional_unet_trains(tmp_path, tiny_config, tiny_autoencoder):
    """unet.cond_model=false: the loss passes no condition (it used to pass zeros, which such a UNet refuses
    on the first step), on raw data and whatever cond_prob says."""
    cfg = _cfg(tiny_config(unet={"cond_model": False}, train_diffusion={"total_clips": 8}))
    trainer = DiffusionTrainer(cfg, tmp_path / "run", autoencoder=tiny_autoencoder, data="synthetic:6", ctx=CPU,
                               progress=False)
    summary = trainer.run()
    assert summary["step"] == 2
    assert all(h["unet/conditioned"] == 0.0 and h["unet/loss"] > 0 for h in trainer.history)
