"""The `pvdm` command: parses arguments and calls library functions; no logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from pvdm_fast.info import collect, format_info

    info = collect()
    print(json.dumps(info, indent=1, default=str) if args.json else format_info(info))
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, compiled kernels, GPUs and the backend per op")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)


def _cmd_data_check(args: argparse.Namespace) -> int:
    from pvdm_fast.data.check import NoUsableClips, check_dataset, format_report

    try:
        report = check_dataset(args.spec, resolution=args.resolution, frames=args.frames, stride=args.stride,
                               split=args.split, fold=args.fold, decode=args.decode)
    except NoUsableClips as exc:  # the report (what was skipped and why) on stdout, then the failure
        print(json.dumps(exc.report) if args.json else format_report(exc.report))
        print(f"pvdm data check: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="inspect video datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="count videos and clips, list skipped files, time a few decodes")
    c.add_argument("spec", help="FORMAT:PATH (ucf101, sky, videos, frames) or synthetic[:COUNT]")
    c.add_argument("--resolution", type=int, default=256)
    c.add_argument("--frames", type=int, default=16, help="frames per clip")
    c.add_argument("--stride", type=int, default=1, help="frame stride inside a clip")
    c.add_argument("--split", default=None, help="ucf101: all/train/test; sky: train/test")
    c.add_argument("--fold", type=int, default=1, help="ucf101 split fold (1-3)")
    c.add_argument("--decode", type=int, default=4, help="clips to decode and time")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_cmd_data_check)


def _cmd_encode(args: argparse.Namespace) -> int:
    import torch

    from safetensors import safe_open

    from pvdm_fast.data.latents import encode_to_cache, file_sha256
    from pvdm_fast.pipeline import load_autoencoder
    from pvdm_fast.train import distributed as D

    model = load_autoencoder(args.autoencoder)  # validates the file
    with safe_open(args.autoencoder, framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    # Trainers store the whole run config (sections); converted files store the autoencoder's fields.
    ae_config = dict(config["autoencoder"]) if isinstance(config.get("autoencoder"), dict) else config
    # The data settings the autoencoder was trained on (trainers store them; converted files do not).
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    stride = args.stride if args.stride is not None else int(data.get("frame_stride", 1))
    antialias = args.antialias if args.antialias is not None else bool(data.get("antialias", True))
    ctx = D.setup(args.device) if D.launched_by_torchrun() else None  # torchrun: the shards split over ranks
    try:
        manifest = encode_to_cache(
            model, args.data, args.out, autoencoder_id=file_sha256(args.autoencoder), autoencoder_config=ae_config,
            resolution=data.get("resolution", ae_config["resolution"]), frames=ae_config["frames"], stride=stride,
            offsets=tuple(args.offsets), clips_per_video=args.clips_per_video, split=args.split, fold=args.fold,
            antialias=antialias, batch_size=args.batch_size, shard_size=args.shard_size,
            device=ctx.device if ctx else args.device, store_dtype=getattr(torch, args.store_dtype),
            num_workers=args.workers)
    finally:
        if ctx:
            D.teardown(ctx)
    if ctx is None or ctx.is_main:
        print(f"{manifest['count']} latents in {len(manifest['shards'])} shards at {args.out}"
              + (f" ({len(manifest['failed'])} clips unreadable)" if manifest["failed"] else ""))
    return 0


def _add_encode(sub) -> None:
    p = sub.add_parser("encode", help="encode a video dataset into a latent cache for diffusion training "
                                      "(torchrun splits the shards over GPUs)")
    p.add_argument("--autoencoder", required=True, help="autoencoder weights (.safetensors from pvdm_fast)")
    p.add_argument("--data", required=True, help="FORMAT:PATH or synthetic[:COUNT]")
    p.add_argument("--out", required=True, help="cache folder (an interrupted run resumes there)")
    p.add_argument("--stride", type=int, default=None,
                   help="frame stride inside a clip (default: the file's data.frame_stride, else 1)")
    p.add_argument("--antialias", action=argparse.BooleanOptionalAction, default=None,
                   help="antialiased resize (default: as the autoencoder was trained, data.antialias, else on)")
    p.add_argument("--offsets", type=int, nargs="+", default=[0],
                   help="start offsets of the window tilings, each in [0, frames*stride); more offsets give "
                        "diffusion training more distinct clips (e.g. 0 4 8 12 for 16 frames; 4x the work)")
    p.add_argument("--clips-per-video", type=int, default=0, help="at most this many clips per video (0: all)")
    p.add_argument("--split", default=None, help="ucf101: all/train/test; sky: train/test")
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=1024, help="clips per shard file")
    p.add_argument("--store-dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument("--device", default=None, help="default: cuda if available (this rank's GPU), else cpu")
    p.add_argument("--workers", type=int, default=4, help="decoding worker processes")
    p.set_defaults(func=_cmd_encode)


def _cmd_sample(args: argparse.Namespace) -> int:
    from pvdm_fast.sample_job import parse_formats, resolve_sampler

    from pvdm_fast.devices import resolve_device
    from pvdm_fast.train import distributed as D

    formats = parse_formats(args.format)
    sampler, steps, eta = resolve_sampler(args.protocol, args.sampler, args.steps, args.eta)
    ctx = None
    if D.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        # One GPU per process; the final count waits for the slowest rank, so a day, not 30 minutes.
        ctx = D.setup(args.device, timeout_minutes=24 * 60)
        device = str(ctx.device)
    else:
        device = args.device
        resolve_device(device)  # before any weight is read
    try:
        return _sample(args, formats, sampler, steps, eta, device, ctx)
    finally:
        if ctx is not None:
            D.teardown(ctx)


def _sample(args: argparse.Namespace, formats, sampler, steps, eta, device, ctx) -> int:
    from pvdm_fast.pipeline import Pipeline
    from pvdm_fast.sample_job import model_identity, sample_to_folder

    options = dict(device=device, precision=args.precision, compile=args.compile, cuda_graph=args.cuda_graph)
    if args.autoencoder and args.diffusion and not (args.official_autoencoder or args.official_diffusion):
        if args.config is not None or args.overrides:  # pvdm_fast files carry their own config
            given = " ".join(([f"--config {args.config}"] if args.config is not None else []) + args.overrides)
            raise ValueError(f"{given}: a preset and key=value overrides apply to official checkpoints only; "
                             "pvdm_fast weights carry their config (use --guidance, --steps, ... to "
                             "change how they are sampled)")
        pipe = Pipeline.from_checkpoints(autoencoder=args.autoencoder, diffusion=args.diffusion, **options)
        model_id = model_identity([args.autoencoder, args.diffusion])
    elif args.official_autoencoder and args.official_diffusion and not (args.autoencoder or args.diffusion):
        config = args.config or "ucf101-256"
        pipe = Pipeline.from_official(args.official_autoencoder, args.official_diffusion, config,
                                      overrides=args.overrides, **options)
        model_id = model_identity([args.official_autoencoder, args.official_diffusion],
                                  f"{config} {' '.join(args.overrides)}".strip())
    else:
        raise ValueError("pass either --autoencoder and --diffusion (pvdm_fast weights) or "
                         "--official-autoencoder and --official-diffusion (official .pth) with --config")
    context, context_settings = None, None
    if args.context is not None:
        context, context_settings = _context_videos(args, pipe)
    elif any(v is not None for v in (args.context_split, args.context_stride)):
        raise ValueError("--context-split and --context-stride go with --context (the videos to continue)")
    result = sample_to_folder(pipe, args.out, num=args.num, batch_size=args.batch_size, seed=args.seed,
                              formats=formats, fps=args.fps, frames=args.frames, sampler=sampler, steps=steps,
                              eta=eta, guidance=args.guidance, condition=args.condition,
                              clip_x0=not args.no_clip, model_id=model_id, progress=not args.quiet, ctx=ctx,
                              context=context, context_settings=context_settings, with_context=args.with_context)
    if ctx is not None and not ctx.is_main:
        return 0
    print(f"{args.out}: {result['total']} videos ({result['existing']} already there, "
          f"{result['generated']} generated)")
    return 0


def _context_videos(args: argparse.Namespace, pipe):
    """--context: video i continues the first clip of the dataset's i-th video (its videos in their
    sorted order), read at the autoencoder's frame size and, for pvdm_fast weights, with the frame stride
    and resize the diffusion model (else the autoencoder) was trained with. Returns (indices -> float
    (N, 3, T, H, W), the recorded settings)."""
    import torch

    from pvdm_fast.data import open_dataset

    height, width = pipe.autoencoder.config.frame_size
    if height != width:
        raise ValueError(f"--context reads square clips, and this autoencoder makes {height}x{width} frames")
    trained_on = {}
    # the clips the diffusion model was trained on (its stride and resize), else the autoencoder's
    for path in (args.diffusion, args.autoencoder):
        if path and not trained_on:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                config = json.loads((f.metadata() or {}).get("config", "{}"))
            trained_on = config.get("data") if isinstance(config.get("data"), dict) else {}
    stride = args.context_stride if args.context_stride is not None else int(trained_on.get("frame_stride", 1))
    antialias = bool(trained_on.get("antialias", True))
    dataset = open_dataset(args.context, resolution=height, frames=pipe.clip_frames, stride=stride, mode="windows",
                           offsets=(0,), clips_per_video=1, split=args.context_split, fold=args.context_fold,
                           antialias=antialias, substitute=False)
    if len(dataset) < args.num:
        raise ValueError(f"--context {args.context} has {len(dataset)} videos of at least {pipe.clip_frames} frames "
                         f"at stride {stride}, fewer than --num {args.num}")

    def clips(indices: list[int]) -> torch.Tensor:
        items = [dataset[i] for i in indices]
        for i, item in zip(indices, items):
            if not item["ok"]:
                raise ValueError(f"--context: video {i} ({dataset.sources[item['video_index']].path}) could not be "
                                 "read; use other data or check it with `pvdm data check`")
        return torch.stack([item["video"] for item in items])

    settings = {"data": args.context, "split": args.context_split, "fold": args.context_fold, "stride": stride,
                "antialias": antialias, "frames": pipe.clip_frames, "resolution": height}
    return clips, settings


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="sample videos (any length) into a folder; resumable")
    p.add_argument("--autoencoder", help="autoencoder weights (.safetensors from pvdm_fast)")
    p.add_argument("--diffusion", help="diffusion UNet weights (.safetensors from pvdm_fast, e.g. the EMA)")
    p.add_argument("--official-autoencoder", help="official PVDM autoencoder .pth")
    p.add_argument("--official-diffusion", help="official PVDM diffusion .pth")
    p.add_argument("--config", default=None, help="preset or YAML for official checkpoints (default ucf101-256)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (official checkpoints)")
    p.add_argument("--out", required=True, help="output folder (existing videos are kept and counted)")
    # --num-videos: under torchrun, whose parser reads the whole command line first, --num is taken
    # as an abbreviation of its --numa-binding
    p.add_argument("--num", "--num-videos", dest="num", type=int, default=16, help="number of videos")
    p.add_argument("--batch-size", type=int, default=8, help="videos per batch (per process under torchrun)")
    p.add_argument("--frames", type=int, default=None, help="frames per video, a multiple of the clip length")
    p.add_argument("--protocol", choices=("official",), default=None, help="official: DDIM, 400 steps, eta 1")
    p.add_argument("--sampler", choices=("ddim", "ddpm", "dpm++2m"), default=None, help="default ddim")
    p.add_argument("--steps", type=int, default=None, help="default: ddim 400, dpm++2m 25, ddpm all")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise scale (default 1, the official)")
    p.add_argument("--guidance", type=float, default=None, help="guidance weight w (default: the config's)")
    p.add_argument("--condition", choices=("reencode", "latent"), default="reencode",
                   help="long videos: condition on the re-encoded previous clip (official) or its latent")
    p.add_argument("--no-clip", action="store_true", help="do not clip the x0 prediction to [-1, 1]")
    p.add_argument("--context", default=None, metavar="FORMAT:PATH",
                   help="continue real videos: video i is conditioned on the first clip of the dataset's i-th "
                        "video, and --frames new frames follow it")
    p.add_argument("--context-split", default=None, help="--context data split (ucf101: all/train/test; sky: train/test)")
    p.add_argument("--context-fold", type=int, default=1, help="--context ucf101 split fold (1-3)")
    p.add_argument("--context-stride", type=int, default=None,
                   help="frame stride of the context clips (default: the diffusion file's data.frame_stride, else "
                        "the autoencoder file's, else 1)")
    p.add_argument("--with-context", action="store_true", help="write each context clip before its new frames")
    p.add_argument("--seed", type=int, default=0, help="video i uses seed + i")
    p.add_argument("--format", default="mp4", help="comma-separated: mp4, gif, png, npz")
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--device", default=None, help="default: cuda if available (this rank's GPU), else cpu")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on GPUs")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--cuda-graph", action="store_true", help="capture the denoising step in a CUDA graph")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sample)


def _cmd_convert(args: argparse.Namespace) -> int:
    from pvdm_fast.convert import convert_official_file

    convert_official_file(args.kind, args.source, args.dest, args.config, args.overrides)
    print(f"{args.dest}: {args.kind} converted from {args.source} (config {args.config})")
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="official PVDM .pth -> pvdm_fast weights (.safetensors with its config)")
    p.add_argument("source", help="official checkpoint (.pth; `module.` / `diffusion_model.` prefixes are fine)")
    p.add_argument("dest", help="output .safetensors")
    p.add_argument("--kind", choices=("autoencoder", "unet"), required=True)
    p.add_argument("--config", default="ucf101-256", help="preset name or YAML path the checkpoint was trained with")
    p.add_argument("overrides", nargs="*", help="key=value config overrides right after dest, e.g. unet.frames=16")
    p.set_defaults(func=_cmd_convert)


# Each entry adds one subcommand; subcommand modules keep their imports inside the handler so that
# `pvdm info` stays fast and needs no optional dependency.
SUBCOMMANDS = [_add_info, _add_data, _add_encode, _add_sample, _add_convert]

# Training and the demo register from their own module (argparse only at import time).
from pvdm_fast.train import commands as _train_commands  # noqa: E402

SUBCOMMANDS += _train_commands.SUBCOMMANDS

# `pvdm eval` (metrics) registers from its own module the same way.
from pvdm_fast.metrics import commands as _eval_commands  # noqa: E402

SUBCOMMANDS += _eval_commands.SUBCOMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvdm", description="pvdm_fast: projected latent video diffusion")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"pvdm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
