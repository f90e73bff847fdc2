"""Run logging on rank 0: a tqdm bar counted in clips, `metrics.jsonl`, and TensorBoard events.

TensorBoard is imported only when a logger is created with it enabled, and a missing install turns
it off with a warning, so training never depends on it. Other ranks get a logger that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
import warnings

METRICS_FILE = "metrics.jsonl"


class RunLogger:
    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, total_clips: int = 0,
                 initial_clips: int = 0, desc: str = "train", tensorboard: bool = True, progress: bool = True,
                 resume_step: int | None = None):
        """resume_step: the checkpoint step a resumed run continues from (records after it, from the
        interrupted run, are dropped); None: a fresh run, which starts a new metrics file (an old one
        there is from a run that never wrote a checkpoint, so nothing can continue it)."""
        self.enabled = enabled
        self.dir = pathlib.Path(run_dir)
        self._tb = None
        self._moviepy: bool | None = None  # found, once a video is logged
        self._bar = None
        self._file = None
        self._start = time.time()
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self._file = open(self.dir / METRICS_FILE, "w")
        else:
            keep_records_up_to(self.dir / METRICS_FILE, resume_step)
            self._file = open(self.dir / METRICS_FILE, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step hides the events an interrupted (or failed) run logged past this point
                self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=initial_clips + 1)
            except ImportError as exc:
                warnings.warn(f"TensorBoard logging is off ({exc}); metrics still go to {METRICS_FILE}",
                              RuntimeWarning, stacklevel=2)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_clips, initial=initial_clips, unit="clip", desc=desc, dynamic_ncols=True)

    def advance(self, clips: int, postfix: dict | None = None) -> None:
        if self._bar is not None:
            self._bar.update(clips)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def log(self, step: int, clips: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        record = {"step": step, "clips": clips, "time": round(time.time() - self._start, 3), **clean}
        # NaN / Inf are not JSON; write them as strings so the line stays parseable.
        record = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, clips)

    def add_video(self, tag: str, video, clips: int, fps: int = 8) -> None:
        """video: float (B, 3, T, H, W) in [-1, 1], logged at `clips` (the x-axis of the scalars).
        TensorBoard videos need moviepy (torch prints a message and logs nothing without it): without
        it one note is written, once; the GIFs under samples/ are written either way."""
        if self._tb is None:
            return
        if self._moviepy is None:
            import importlib.util

            self._moviepy = importlib.util.find_spec("moviepy") is not None
            if not self._moviepy:
                self.write("note: TensorBoard videos need the moviepy package; the images are in samples/")
        if self._moviepy:
            self._tb.add_video(tag, ((video.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4),
                               clips, fps=fps)

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._tb = self._file = None


def keep_records_up_to(path: pathlib.Path, step: int) -> None:
    """Drop the records after `step` (and a line cut short by a crash), rewriting atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line)
    if kept != lines:
        from pvdm_fast._atomic import atomic_write

        atomic_write(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept)))


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = pathlib.Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
