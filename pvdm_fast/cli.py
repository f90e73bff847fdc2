"""The `pvdm` command: parses arguments and calls library functions; no logic of its own."""

from __future__ import annotations

import argparse
import json
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
    from pvdm_fast.data.check import check_dataset, format_report

    report = check_dataset(args.spec, resolution=args.resolution, frames=args.frames, stride=args.stride,
                           split=args.split, fold=args.fold, decode=args.decode)
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

    from pvdm_fast.data.latents import encode_to_cache, file_sha256
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.io import load_weights

    state, kind, config = load_weights(args.autoencoder)
    if "autoencoder" not in kind:
        raise ValueError(f"{args.autoencoder} holds a {kind!r} model, not an autoencoder")
    model = Autoencoder(AutoencoderConfig(**config))
    model.load_state_dict(state, strict=True)
    manifest = encode_to_cache(
        model, args.data, args.out, autoencoder_id=file_sha256(args.autoencoder), autoencoder_config=config,
        resolution=config["resolution"], frames=config["frames"], stride=args.stride,
        offsets=tuple(args.offsets), clips_per_video=args.clips_per_video, split=args.split, fold=args.fold,
        batch_size=args.batch_size, shard_size=args.shard_size, device=args.device,
        store_dtype=getattr(torch, args.store_dtype), num_workers=args.workers)
    print(f"{manifest['count']} latents in {len(manifest['shards'])} shards at {args.out}"
          + (f" ({len(manifest['failed'])} clips unreadable)" if manifest["failed"] else ""))
    return 0


def _add_encode(sub) -> None:
    p = sub.add_parser("encode", help="encode a video dataset into a latent cache for diffusion training")
    p.add_argument("--autoencoder", required=True, help="autoencoder weights (.safetensors from pvdm_fast)")
    p.add_argument("--data", required=True, help="FORMAT:PATH or synthetic[:COUNT]")
    p.add_argument("--out", required=True, help="cache folder (an interrupted run resumes there)")
    p.add_argument("--stride", type=int, default=1, help="frame stride inside a clip")
    p.add_argument("--offsets", type=int, nargs="+", default=[0],
                   help="start offsets of the window tilings, each in [0, frames*stride)")
    p.add_argument("--clips-per-video", type=int, default=0, help="at most this many clips per video (0: all)")
    p.add_argument("--split", default=None, help="ucf101: all/train/test; sky: train/test")
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=1024, help="clips per shard file")
    p.add_argument("--store-dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--workers", type=int, default=4, help="decoding worker processes")
    p.set_defaults(func=_cmd_encode)


# Each entry adds one subcommand; subcommand modules keep their imports inside the handler so that
# `pvdm info` stays fast and needs no optional dependency.
SUBCOMMANDS = [_add_info, _add_data, _add_encode]


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
