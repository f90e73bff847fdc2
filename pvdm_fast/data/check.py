"""`pvdm data check`: what a dataset holds, what was skipped and why, and how fast clips decode."""

from __future__ import annotations

import time
import warnings

from pvdm_fast.data.dataset import open_dataset
from pvdm_fast.data.specs import parse_spec


class NoUsableClips(ValueError):
    """The data holds no usable clip; the message ends with the report, `report` holds it as a dict."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def spread(count: int, size: int) -> list[int]:
    """min(count, size) distinct indices of range(size), evenly spread, first and last included."""
    k = min(count, size)
    if k <= 1:
        return [0] * k
    return [round(i * (size - 1) / (k - 1)) for i in range(k)]  # steps >= 1, so distinct


def check_dataset(spec: str, *, resolution: int = 256, frames: int = 16, stride: int = 1, split: str | None = None,
                  fold: int = 1, decode: int = 4) -> dict:
    """Summary dict: spec, videos (found), usable_videos, clips (non-overlapping windows of `frames`),
    skipped [{path, reason}], decoded, decode_failed, seconds_per_clip, clip_shape.
    Raises NoUsableClips (a ValueError whose message includes the report) when no clip is usable."""
    if decode < 0:
        raise ValueError(f"--decode takes the number of clips to decode and time (>= 0), got {decode}")
    spec = parse_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # everything skipped is listed in the report instead
        dataset = open_dataset(spec, resolution=resolution, frames=frames, stride=stride, mode="windows",
                               clips_per_video=0, split=split, fold=fold, verify=True, substitute=False,
                               allow_empty=True)
        picks = spread(decode, len(dataset))
        started = time.perf_counter()
        items = [dataset[i] for i in picks]
        elapsed = time.perf_counter() - started
    skipped = dataset.skipped + [{"path": p, "reason": r} for p, r in dataset.failures.items()]
    report = {
        "spec": str(spec),
        "videos": len(dataset.sources) + len(dataset.skipped) - len(dataset.plan.skipped),
        "usable_videos": dataset.num_videos - len(dataset.failures),
        "clips": len(dataset),
        "skipped": skipped,
        "decoded": sum(1 for item in items if item["ok"]),
        "decode_failed": sum(1 for item in items if not item["ok"]),
        "seconds_per_clip": elapsed / max(1, len(items)),
        "clip_shape": list(items[0]["video"].shape) if items else None,
    }
    if not report["clips"]:
        raise NoUsableClips(f"no usable clips in {spec} with {frames} frames at stride {stride}: every video was "
                            "skipped (reasons below); replace the unreadable files, or use shorter clips (--frames, "
                            "--stride) if the videos are too short\n" + format_report(report), report)
    return report


def format_report(report: dict) -> str:
    lines = [f"data        {report['spec']}",
             f"videos      {report['videos']} found, {report['usable_videos']} usable",
             f"clips       {report['clips']} (non-overlapping, shape {report['clip_shape']})",
             f"decoded     {report['decoded']} clips, {1000 * report['seconds_per_clip']:.1f} ms per clip"
             + (f", {report['decode_failed']} failed" if report["decode_failed"] else ""),
             f"skipped     {len(report['skipped'])}"]
    lines += [f"  {s['path']}: {s['reason']}" for s in report["skipped"][:50]]
    if len(report["skipped"]) > 50:
        lines.append(f"  ... and {len(report['skipped']) - 50} more (--json lists all)")
    return "\n".join(lines)
