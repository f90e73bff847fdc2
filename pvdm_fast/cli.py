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


# Each entry adds one subcommand; subcommand modules keep their imports inside the handler so that
# `pvdm info` stays fast and needs no optional dependency.
SUBCOMMANDS = [_add_info]


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
