"""`pvdm eval fvd|kvd|is|recon`: argparse registration and thin handlers (nothing heavy at import time).

Each prints the result and writes it, protocol included, as JSON (--out; by default `<metric>.json`
in the sample folder, or beside the autoencoder file for recon). Under torchrun, feature extraction
(recon: the reconstructions) is sharded over ranks and rank 0 writes the result.
"""

from __future__ import annotations

import argparse
import json
import pathlib


def _context(device):
    from pvdm_fast.train import distributed as D

    return D, D.setup(device)  # a bad --device is a ValueError there (pvdm_fast.devices)


def _finish(result: dict, out: pathlib.Path, is_main: bool) -> None:
    from pvdm_fast.metrics.evaluate import to_json_ready

    if not is_main:
        return
    text = json.dumps(to_json_ready(result), indent=1, sort_keys=True)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"written to {out}")


def _num(value: int) -> int | None:
    return None if value == 0 else value  # a negative count is refused by the evaluation itself


def _cmd_distance(args: argparse.Namespace) -> int:
    from pvdm_fast.metrics.evaluate import evaluate_fvd

    D, ctx = _context(args.device)
    try:
        kvd = {"num_subsets": args.subsets, "subset_size": args.subset_size, "seed": args.seed} \
            if args.metric == "kvd" else None
        result = evaluate_fvd(real=args.real, fake=args.fake, i3d=args.i3d, num=_num(args.num), frames=args.frames,
                              stride=args.stride, resolution=args.resolution, batch_size=args.batch_size,
                              seed=args.seed, split=args.split, fold=args.fold, workers=args.workers,
                              stats_cache=args.stats_cache, device=ctx.device, kvd=kvd, progress=not args.quiet,
                              sample_stride=args.sample_stride, antialias=args.antialias)
        if args.metric == "kvd":
            result = {k: result[k] for k in ("kvd", "kvd_std", "subset_size", "num_subsets", "fvd", "protocol")}
        default = pathlib.Path(args.fake) / f"{args.metric}{args.frames}.json"
        _finish(result, pathlib.Path(args.out) if args.out else default, ctx.is_main)
    finally:
        D.teardown(ctx)
    return 0


def _cmd_is(args: argparse.Namespace) -> int:
    from pvdm_fast.metrics.evaluate import evaluate_is

    D, ctx = _context(args.device)
    try:
        result = evaluate_is(fake=args.fake, c3d=args.c3d, c3d_mean=args.c3d_mean, num=_num(args.num),
                             frames=args.frames, stride=args.stride, splits=args.splits, batch_size=args.batch_size,
                             device=ctx.device, progress=not args.quiet)
        _finish(result, pathlib.Path(args.out) if args.out else pathlib.Path(args.fake) / "is.json", ctx.is_main)
    finally:
        D.teardown(ctx)
    return 0


def _cmd_recon(args: argparse.Namespace) -> int:
    from pvdm_fast.metrics.evaluate import evaluate_recon

    D, ctx = _context(args.device)
    try:
        result = evaluate_recon(autoencoder=args.autoencoder, data=args.data, num=args.num, stride=args.stride,
                                batch_size=args.batch_size, seed=args.seed, split=args.split, fold=args.fold,
                                workers=args.workers, lpips=args.lpips, lpips_heads=args.lpips_heads,
                                device=ctx.device, progress=not args.quiet)
        ae = pathlib.Path(args.autoencoder)
        _finish(result, pathlib.Path(args.out) if args.out else ae.with_name(ae.stem + ".recon.json"), ctx.is_main)
    finally:
        D.teardown(ctx)
    return 0


def _common(p: argparse.ArgumentParser, num_help: str) -> None:
    # --num-videos: under torchrun, whose parser reads the whole command line first, --num is an
    # ambiguous abbreviation of its --numa-binding
    p.add_argument("--num", "--num-videos", dest="num", type=int, default=2048, help=num_help)
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--stride", type=int, default=1, help="frame stride inside a clip")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="default: cuda if available (this rank's GPU), else cpu")
    p.add_argument("--out", default=None, help="JSON result file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default=None, help="ucf101: all/train/test; sky: train/test")
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of real clips (and KVD subsets)")
    p.add_argument("--workers", type=int, default=0, help="decoding worker processes")


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="FVD, KVD, IS and reconstruction metrics (torchrun shards feature extraction)")
    ev = p.add_subparsers(dest="eval_command", required=True)
    for metric in ("fvd", "kvd"):
        c = ev.add_parser(metric, help=f"{metric.upper()} of generated videos against real data (I3D features)")
        c.add_argument("--real", required=True, help="FORMAT:PATH dataset, or a statistics .npz from --stats-cache")
        c.add_argument("--fake", required=True, help="folder of generated videos (.npz / .mp4 / PNG folders)")
        c.add_argument("--i3d", required=True, help="i3d_pretrained_400.pt (pytorch-i3d) or i3d_torchscript.pt")
        _common(c, "videos per side (0: every generated video)")
        _data_options(c)
        c.add_argument("--resolution", type=int, default=256, help="real clips are resized to this (the samples')")
        c.add_argument("--sample-stride", type=int, default=None,
                       help="frame stride inside the generated videos (default: --stride); 1 for a model trained "
                            "at data.frame_stride = --stride, whose samples are already strided")
        c.add_argument("--antialias", action=argparse.BooleanOptionalAction, default=True,
                       help="antialiased resize of the real clips (default); --no-antialias: plain bilinear, as the "
                            "official loader (and data.antialias=false training)")
        c.add_argument("--stats-cache", default=None,
                       help="real statistics .npz: reused when its protocol matches, written otherwise")
        if metric == "kvd":
            c.add_argument("--subsets", type=int, default=100, help="random subsets averaged")
            c.add_argument("--subset-size", type=int, default=1000, help="items per subset and side (at most)")
        c.set_defaults(func=_cmd_distance, metric=metric)
    c = ev.add_parser("is", help="Inception Score with the UCF-101 C3D (TGAN / StyleGAN-V protocol)")
    c.add_argument("--fake", required=True, help="folder of generated videos")
    c.add_argument("--c3d", required=True, help="c3d_ucf101.pt (StyleGAN-V TorchScript), a C3D state dict, or "
                                                "TGANv2's conv3d_deepnetA_ucf.npz with --c3d-mean")
    c.add_argument("--c3d-mean", default=None, help="TGANv2's mean2.npz (only for Chainer weights)")
    c.add_argument("--splits", type=int, default=10)
    _common(c, "videos (0: all)")
    c.set_defaults(func=_cmd_is)
    c = ev.add_parser("recon", help="PSNR / SSIM / LPIPS of autoencoder reconstructions")
    c.add_argument("--autoencoder", required=True, help="autoencoder weights (.safetensors from pvdm_fast)")
    c.add_argument("--data", required=True, help="FORMAT:PATH or synthetic[:COUNT]")
    c.add_argument("--num", "--num-videos", dest="num", type=int, default=256, help="clips (one per video)")
    c.add_argument("--stride", type=int, default=None, help="default: the file's data.frame_stride, else 1")
    c.add_argument("--batch-size", type=int, default=4)
    c.add_argument("--lpips", default=None, help="VGG16 torchvision weights, or one file with VGG16 + LPIPS heads")
    c.add_argument("--lpips-heads", default=None, help="LPIPS linear heads (vgg.pth) when separate")
    c.add_argument("--device", default=None)
    c.add_argument("--out", default=None, help="JSON result file (default: beside the autoencoder file)")
    c.add_argument("--quiet", action="store_true")
    _data_options(c)
    c.set_defaults(func=_cmd_recon)


SUBCOMMANDS = [add_eval]
