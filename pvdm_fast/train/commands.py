"""Library entry points behind `pvdm train-autoencoder`, `pvdm train-diffusion` and `pvdm demo`,
and the argparse registration the CLI uses (this module imports nothing heavy at import time)."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

STAGES = {"autoencoder": "train_autoencoder", "diffusion": "train_diffusion"}


def resolve_config(config: str | None, overrides, stage: str, resume: str | None):
    """The run config: --config (preset or YAML), or the resumed run's config.yaml; then overrides
    (bare `key=value` go to the stage's train section)."""
    from pvdm_fast.configs import load_config
    from pvdm_fast.train.config import split_overrides
    from pvdm_fast.train.loop import CONFIG_FILE

    source = config
    if source is None:
        if resume is None:
            raise ValueError("pass --config PRESET_OR_YAML (e.g. --config ucf101-256), or --resume RUN_DIR")
        source = str(pathlib.Path(resume) / CONFIG_FILE)
        if not pathlib.Path(source).is_file():
            raise FileNotFoundError(f"{resume} is not a run folder (no {CONFIG_FILE}); pass --config as well")
    return load_config(source, split_overrides(overrides, STAGES[stage]))


def _holds_checkpoint(path: pathlib.Path) -> bool:
    return (path / "checkpoints").is_dir() and any((path / "checkpoints").glob("step-*"))


def _run_dir(out: str | None, resume: str | None, auto_resume: bool = False) -> tuple[pathlib.Path, bool]:
    if auto_resume:
        # The same command for every start of a job that may be preempted: a new run the first time,
        # then a resume of the run in --out once it holds a checkpoint.
        if resume is not None:
            raise ValueError("--auto-resume continues the run in --out when there is one; drop --resume")
        if out is None:
            raise ValueError("--auto-resume needs --out RUN_DIR (started there, or resumed if it holds a run)")
        return pathlib.Path(out), _holds_checkpoint(pathlib.Path(out))
    if resume is not None:
        if out is not None and pathlib.Path(out).resolve() != pathlib.Path(resume).resolve():
            raise ValueError(f"--resume {resume} continues that run in place; drop --out {out} or make them equal")
        path = pathlib.Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"cannot resume: run folder {resume} does not exist")
        return path, True
    if out is None:
        raise ValueError("pass --out RUN_DIR (where the config, logs, samples and checkpoints go)")
    path = pathlib.Path(out)
    if _holds_checkpoint(path):
        raise ValueError(f"{out} already holds a training run; pass --resume {out} (or --auto-resume) to continue "
                         "it, or a new --out")
    return path, False


def _same_source(a: str, b: str) -> bool:
    """Whether two --data / --latents values name the same place (spelled alike, or the same path)."""
    if a == b:
        return True
    prefix_a, _, rest_a = a.rpartition(":") if ":" in a and not pathlib.Path(a).exists() else ("", "", a)
    prefix_b, _, rest_b = b.rpartition(":") if ":" in b and not pathlib.Path(b).exists() else ("", "", b)
    return prefix_a == prefix_b and os.path.realpath(rest_a) == os.path.realpath(rest_b)


def _check_auto_resume(run_dir: pathlib.Path, saved: dict, given: dict) -> None:
    """--auto-resume continues the run in --out only with the data it was trained on: one job script
    reused with other data (or a copy-paste slip) must not take up another run."""
    for key, value in given.items():
        if value is not None and saved.get(key) is not None and not _same_source(str(value), str(saved[key])):
            raise ValueError(f"--auto-resume: {run_dir} holds a run trained with --{key} {saved[key]}, and this command "
                             f"gives --{key} {value}; pass another --out for a new run, or continue that run on "
                             f"purpose with --resume {run_dir} --{key} {value}")


def _saved_run_info(run_dir: pathlib.Path) -> dict:
    from pvdm_fast.train.loop import RUN_INFO

    path = run_dir / RUN_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def train(stage: str, *, config: str | None = None, overrides=(), out: str | None = None, resume: str | None = None,
          data: str | None = None, latents: str | None = None, autoencoder: str | None = None,
          device: str | None = None, progress: bool = True, auto_resume: bool = False) -> dict:
    """Train one stage (single process, or DDP under torchrun). Returns the run summary.
    `auto_resume`: start the run in `out`, or resume it if `out` already holds a checkpoint."""
    from pvdm_fast.train import distributed as D

    run_dir, resuming = _run_dir(out, resume, auto_resume)
    overrides = list(overrides) + ([f"device={device}"] if device else [])
    cfg = resolve_config(config, overrides, stage, str(run_dir) if resuming else None)
    saved = _saved_run_info(run_dir) if resuming else {}
    if auto_resume and resuming:
        _check_auto_resume(run_dir, saved, {"data": data, "latents": latents})
    if saved and saved.get("stage") not in (None, STAGES[stage]):
        raise ValueError(f"{run_dir} is a {saved['stage']} run, not {STAGES[stage]}")
    from pvdm_fast.train.config import section

    ctx = D.setup(section(cfg, STAGES[stage]).device)
    try:
        if stage == "autoencoder":
            from pvdm_fast.train.autoencoder_trainer import AutoencoderTrainer

            data = data or saved.get("data")
            if not data:
                raise ValueError("pass --data FORMAT:PATH (e.g. ucf101:/data/UCF-101 or synthetic)")
            trainer = AutoencoderTrainer(cfg, run_dir, data=data, ctx=ctx, resume=resuming, progress=progress)
        else:
            from pvdm_fast.train.diffusion_trainer import DiffusionTrainer

            if data is None and latents is None:
                data, latents = saved.get("data"), saved.get("latents")
            autoencoder = autoencoder or saved.get("autoencoder")
            if not autoencoder:
                raise ValueError("pass --autoencoder AE.safetensors (from `pvdm train-autoencoder` or `pvdm convert`)")
            trainer = DiffusionTrainer(cfg, run_dir, autoencoder=autoencoder, data=data, latents=latents, ctx=ctx,
                                       resume=resuming, progress=progress)
        return trainer.run()
    finally:
        D.teardown(ctx)


# ---- argparse ------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="preset name (ucf101-256, sky-256, ucf101-128, demo) or a YAML file")
    p.add_argument("--out", help="run folder: config, metrics.jsonl, TensorBoard, samples, checkpoints")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run exactly where its last checkpoint left off")
    p.add_argument("--auto-resume", action="store_true",
                   help="start the run in --out, or continue it if --out already holds a checkpoint (one command "
                        "for every start of a preemptible job)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the GPU when there is one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides: bare keys go to the stage's train section (lr=2e-4), dotted keys "
                        "anywhere (autoencoder.channels=256)")


def _report(summary: dict) -> int:
    skipped = summary.get("skipped_steps", 0)
    if skipped:
        print(f"warning: {skipped} of {summary['step']} optimizer steps were skipped because of a non-finite loss "
              "(skip_nonfinite=true); check the run's metrics.jsonl before using its weights", file=sys.stderr)
    if summary["interrupted"]:
        print(f"stopped by {summary['interrupted']} at step {summary['step']}; checkpoint {summary['checkpoint']} "
              f"(continue with --resume)")
        return 130
    for path in summary["exported"]:
        print(f"wrote {path}")
    return 0


def _train_cmd(stage: str):
    def run(args: argparse.Namespace) -> int:
        from pvdm_fast.train.loop import NonFiniteLossError

        try:
            summary = train(stage, config=args.config, overrides=args.overrides, out=args.out, resume=args.resume,
                            auto_resume=args.auto_resume,
                            data=args.data, latents=getattr(args, "latents", None),
                            autoencoder=getattr(args, "autoencoder", None), device=args.device,
                            progress=not args.no_progress)
        except NonFiniteLossError as exc:
            print(f"pvdm {args.command}: {exc}", file=sys.stderr)
            return 3
        return _report(summary)
    return run


def add_train_autoencoder(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train the stage-1 autoencoder (L1 + LPIPS, then GAN)")
    p.add_argument("--data", help="FORMAT:PATH, e.g. ucf101:/data/UCF-101, sky:/data/sky_timelapse, synthetic")
    _common(p)
    p.set_defaults(func=_train_cmd("autoencoder"))


def add_train_diffusion(sub) -> None:
    p = sub.add_parser("train-diffusion", help="train the triplane diffusion UNet on autoencoder latents")
    p.add_argument("--autoencoder", help="autoencoder.safetensors (or the stage-1 run folder)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="FORMAT:PATH: encode clips on the fly with the frozen autoencoder")
    src.add_argument("--latents", help="a latent cache from `pvdm encode` (no encoder in the loop)")
    _common(p)
    p.set_defaults(func=_train_cmd("diffusion"))


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train both stages on synthetic videos and sample a long video")
    p.add_argument("--out", default="pvdm-demo", help="output folder (default: ./pvdm-demo)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quick", action="store_true", help="a shorter run (the test suite's smoke test)")
    p.add_argument("--no-progress", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from pvdm_fast.train.demo import run_demo

        result = run_demo(args.out, device=args.device, quick=args.quick, progress=not args.no_progress)
        print(json.dumps(result["metrics"], indent=1))
        print(f"demo outputs in {os.path.abspath(args.out)}: " + ", ".join(result["files"]))
        return 0

    p.set_defaults(func=run)


SUBCOMMANDS = [add_train_autoencoder, add_train_diffusion, add_demo]
