"""The step loop both trainers share: accumulation, mixed precision, clipping, non-finite losses,
EMA, logging, periodic checkpoints, samples and held-out evaluations, exact resume and signal-triggered
saves.

A stage subclasses `Trainer` and supplies the models (`build`), the dataset, `train_step` (which
calls `accumulate` and `update` for each of its optimizers) and the weights to save. Per-step
randomness comes from `step_generator(seed, step, micro)`: the same draw on every rank, of which
each rank takes the rows of its own samples, so a DDP run sees the same randomness as one process
on the global batch and a resumed run the same as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import pathlib
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pvdm_fast.train import checkpoint as ckpt
from pvdm_fast.train import distributed as D
from pvdm_fast.train import rng
from pvdm_fast.train.config import check_sections, section
from pvdm_fast.train.data import batch_stream
from pvdm_fast.train.ema import EMA
from pvdm_fast.train.logging import RunLogger
from pvdm_fast.train.signals import StopRequest

# Optimizer settings taken from the config, not the checkpoint, when a run resumes (lr aside).
HYPERPARAMETERS = ("betas", "weight_decay", "eps")
RUN_INFO = "run.json"
CONFIG_FILE = "config.yaml"


def _with_defaults(section: str, saved):
    """A checkpoint's config section with the keys it predates (added since) at their defaults: an older
    run behaved as the default does, so it still resumes unchanged."""
    if not isinstance(saved, dict):
        return saved
    import dataclasses

    from pvdm_fast.configs import section_class

    defaults = json.loads(json.dumps(dataclasses.asdict(section_class(section)())))
    return {**defaults, **saved}


class NonFiniteLossError(RuntimeError):
    """A NaN/Inf loss stopped training; the message says where the last good checkpoint is."""


@dataclass
class Part:
    """One optimizer and the (possibly DDP-wrapped) module whose gradients it applies."""

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    max_grad_norm: float = 0.0
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    clip_groups: dict[str, list[nn.Parameter]] | None = None  # clipped separately, each to max_grad_norm

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means full fp32. auto: bf16 on GPUs (no loss scaling needed), fp32 on CPUs."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision=fp16 needs a GPU; use precision=fp32 or bf16 on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


_flush_depth = 0


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats to zero inside (nestable; torch has no getter for the flag). Values
    decaying toward zero (zero-initialised layers, Adam's moments) become denormals, which make x86
    CPUs 10-50x slower per operation."""
    global _flush_depth
    if _flush_depth == 0:
        import numpy as np

        # numpy computes (and caches) its float limits on first use; under flushing it would warn.
        np.finfo(np.float32), np.finfo(np.float64)
        torch.set_flush_denormal(True)
    _flush_depth += 1
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)


def lr_factor(update: int, *, warmup_steps: int, total_steps: int, decay: str, min_ratio: float) -> float:
    """lr multiplier of optimizer update `update` (0-based): (update + 1) / warmup_steps during the
    warm-up, then 1 ("none") or a linear / half-cosine fall from 1 at the first update after the
    warm-up to min_ratio at the last update, total_steps - 1 (a decay of one update stays at 1)."""
    if update < warmup_steps:
        return (update + 1) / warmup_steps
    if decay == "none":
        return 1.0
    progress = min(1.0, (update - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with torch's fused implementation where every parameter allows it (floating point, on a
    CPU or CUDA device): one pass over each parameter instead of ~10 small kernels, the same update
    rule and the same state-dict layout (checkpoints move between the two)."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, fused=fused, **kwargs)


def rows_of_rank(ctx: D.DistContext, x: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a draw made for the global micro-batch: rank r holds global positions
    r, r + W, r + 2W, ... (the interleaving of the sharded sampler)."""
    return x[ctx.rank::ctx.world_size]


class Trainer:
    section_name = ""
    description = "train"

    def __init__(self, cfg, run_dir: str | os.PathLike, *, ctx: D.DistContext | None = None,
                 resume: bool = False, run_info: dict | None = None, progress: bool = True):
        self.cfg = cfg
        check_sections(cfg)
        self.tc = section(cfg, self.section_name)
        self.run_dir = pathlib.Path(run_dir)
        self.ctx = ctx or D.setup(self.tc.device)
        self.resume = resume
        self.run_info = dict(run_info or {})
        self.progress = progress
        self.dtype = autocast_dtype(self.tc.precision, self.ctx.device)
        if self.tc.batch_size % self.ctx.world_size:
            raise ValueError(f"batch_size={self.tc.batch_size} (clips per micro-step over all ranks) must be a "
                             f"multiple of the {self.ctx.world_size} processes")
        self.local_batch = self.tc.batch_size // self.ctx.world_size
        self.step = 0
        self.skipped_steps = 0
        self.parts: dict[str, Part] = {}
        self.ema: EMA | None = None
        self.logger: RunLogger | None = None
        self.last_checkpoint: pathlib.Path | None = None
        self.history: list[dict] = []
        self._stop: StopRequest | None = None  # the signal flag while the step loop runs

    # ---- what a stage provides -------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def dataset(self):
        raise NotImplementedError

    def train_step(self, batches: list[dict]) -> dict[str, float]:
        raise NotImplementedError

    def weights(self) -> dict[str, ckpt.Weights]:
        raise NotImplementedError

    def ema_module(self) -> nn.Module | None:
        """The raw (unwrapped) module the EMA follows."""
        return None

    def load_weights(self, checkpoint: ckpt.Checkpoint) -> None:
        raise NotImplementedError

    def sample(self) -> None:
        """Periodic samples / reconstructions into the run folder (rank 0)."""

    def export(self) -> list[pathlib.Path]:
        """Final model files for `pvdm sample` / the next stage (rank 0)."""
        return []

    def prepare_eval(self) -> None:
        """Check and load what the held-out evaluation needs (eval_every > 0; all ranks, before training:
        a bad eval setting is a ValueError before the first step)."""

    def evaluate(self) -> dict[str, float]:
        """The held-out evaluation at this step, {"eval/<metric>": value}; every rank takes part and gets
        the same numbers. Runs under no_grad with the global generators preserved (see `_evaluate`)."""
        return {}

    # ---- helpers for stages ----------------------------------------------------------------
    @property
    def clips_per_step(self) -> int:
        return self.tc.batch_size * self.tc.grad_accum

    @property
    def total_steps(self) -> int:
        return math.ceil(self.tc.total_clips / self.clips_per_step)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.dtype)

    def generator(self, micro: int, salt: int = 0) -> torch.Generator:
        return rng.step_generator(self.tc.seed + 7919 * salt, self.step, micro)

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP under a process group (gradients averaged over ranks), else the module itself."""
        if not self.ctx.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.ctx.device] if self.ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def maybe_compile(self, module: nn.Module) -> nn.Module:
        return torch.compile(module) if self.tc.compile else module

    def part_updates(self, name: str) -> int:
        """How many updates optimizer `name` makes over the whole run (the horizon of its lr schedule)."""
        return self.total_steps

    def exported_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights a run exports: the EMA's, or the trained ones when there is no EMA or it never
        averaged (ema_every longer than the run: its shadow is still the random initialisation)."""
        if self.ema is None:
            return model.state_dict()
        if self.ema.updates == 0:
            self.logger.write(f"the EMA never averaged (ema_every={self.ema.every}, {self.step} steps): "
                              "exporting the trained weights instead of the initial ones")
            return model.state_dict()
        return self.ema.state_dict()

    def ema_due(self) -> bool:
        """Whether the step just taken moved the EMA's module (then the EMA may average it)."""
        return True

    def eval_copy(self, model: nn.Module) -> nn.Module:
        """An eval-mode copy of `model` holding the weights `export` would write (the EMA's once it averaged,
        else the trained ones) on every rank: the EMA lives on rank 0 and is broadcast. The training module
        keeps its mode, gradients and weights. Use it under no_grad: its parameters keep requires_grad, as
        a model loaded by `pvdm eval recon` has them (some kernels pick another path, and rounding, without)."""
        net = copy.deepcopy(model).eval()
        use_ema = D.broadcast_object(self.ctx, self.ema is not None and self.ema.updates > 0)
        if use_ema:
            if self.ctx.is_main:
                self.ema.copy_to(net)
            D.broadcast_module(self.ctx, net)
        return net

    def eval_data_spec(self) -> str:
        """The held-out clips' FORMAT:PATH: eval_data, else the training --data."""
        spec = self.tc.eval_data or getattr(self, "data_spec", None)
        if not spec:
            raise ValueError(f"{self.section_name}.eval_every={self.tc.eval_every} needs eval_data=FORMAT:PATH (the "
                             "held-out videos) when the run trains on a latent cache")
        return spec

    def eval_clips(self, frames: int):
        """The held-out clips, cut as the training clips are (data.*), eval_split (default data.split)."""
        from pvdm_fast.train.evaluation import EvalClips

        d, tc = self.cfg.data, self.tc
        split = tc.eval_split if tc.eval_split is not None else d.get("split")
        if not tc.eval_data and split == d.get("split") and self.ctx.is_main:
            print(f"note: the held-out evaluation draws its clips from the training data ({self.eval_data_spec()}, "
                  f"split {split}): scores on seen clips. For unseen ones train on data.split=train with "
                  "eval_split=test (UCF-101), or pass eval_data=FORMAT:PATH", file=sys.stderr)
        return EvalClips(self.eval_data_spec(), num=tc.eval_videos, frames=frames, stride=int(d.frame_stride),
                         resolution=int(d.resolution), split=split, fold=int(d.get("fold", 1)),
                         antialias=bool(d.get("antialias", True)), seed=tc.eval_seed, batch_size=self.local_batch,
                         ctx=self.ctx)

    def make_part(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float,
                  scheduler=None) -> Part:
        """A stage's own scheduler is kept unless the config asks for a decay (or a warm-up the stage
        does not apply): then the section's warm-up + decay replaces it. The schedule counts that
        optimizer's own updates (a discriminator's start at gan_start_step)."""
        tc = self.tc
        if tc.lr_decay != "none" or (scheduler is None and tc.warmup_steps > 0):
            factor = functools.partial(lr_factor, warmup_steps=tc.warmup_steps, total_steps=self.part_updates(name),
                                       decay=tc.lr_decay, min_ratio=tc.min_lr_ratio)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        scaler = torch.amp.GradScaler(self.ctx.device.type) if self.dtype == torch.float16 else None
        part = Part(name, module, optimizer, max_grad_norm, scheduler, scaler)
        self.parts[name] = part
        return part

    def accumulate(self, part: Part, batches: list[dict],
                   loss_fn: Callable[[dict, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> dict[str, float]:
        """Backward of loss_fn over the micro-batches (each weighted 1/n); DDP syncs only on the last.
        Returns the metrics averaged over micro-batches and ranks (key `loss` included)."""
        n = len(batches)
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(batches):
            last = i == n - 1
            sync = contextlib.nullcontext() if last or not hasattr(part.module, "no_sync") else part.module.no_sync()
            with sync:
                with self.autocast():
                    loss, metrics = loss_fn(batch, i)
                scaled = loss.float() / n
                (part.scaler.scale(scaled) if part.scaler is not None else scaled).backward()
            for k, v in {"loss": loss, **metrics}.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / n
        keys = sorted(sums)
        stacked = D.mean_over_ranks(self.ctx, torch.stack([sums[k] for k in keys]))
        return {f"{part.name}/{k}": v for k, v in zip(keys, stacked.tolist())}

    def update(self, part: Part, metrics: dict[str, float]) -> bool:
        """Clip and apply the accumulated gradients, unless the loss was not finite (then stop, or
        skip the update when skip_nonfinite). Returns whether the update was applied."""
        loss = metrics[f"{part.name}/loss"]
        if not D.all_true(self.ctx, math.isfinite(loss)):
            part.optimizer.zero_grad(set_to_none=True)
            if self.last_checkpoint:
                where = f"the last good checkpoint is {self.last_checkpoint}"
                how = f"Resume with --resume {self.run_dir} and a lower lr"
            else:  # nothing to resume from: --resume would fail with "holds no checkpoint yet"
                where = "no checkpoint was written yet"
                how = f"Start the run again (the same --out {self.run_dir}) with a lower lr"
            if not self.tc.skip_nonfinite:
                raise NonFiniteLossError(
                    f"{part.name} loss is {loss} at step {self.step}; training stopped and {where}. "
                    f"{how} (or a smaller max_grad_norm), or set skip_nonfinite=true to skip such steps")
            self.skipped_steps += 1
            metrics[f"{part.name}/skipped"] = 1.0
            return False
        metrics[f"{part.name}/lr"] = part.optimizer.param_groups[0]["lr"]  # the rate this update uses
        if part.scaler is not None:
            part.scaler.unscale_(part.optimizer)
        if part.max_grad_norm > 0:
            for group, params in (part.clip_groups or {"": part.params}).items():
                norm = torch.nn.utils.clip_grad_norm_(params, part.max_grad_norm)
                metrics[f"{part.name}/grad_norm{'_' + group if group else ''}"] = float(norm)
        if part.scaler is not None:
            part.scaler.step(part.optimizer)
            part.scaler.update()
        else:
            part.optimizer.step()
        part.optimizer.zero_grad(set_to_none=True)
        if part.scheduler is not None:
            part.scheduler.step()
        return True

    # ---- checkpoints -----------------------------------------------------------------------
    def _model_config(self) -> dict:
        from omegaconf import OmegaConf

        return {k: v for k, v in OmegaConf.to_container(self.cfg, resolve=True).items()
                if not str(k).startswith("train_")}

    def training_state(self) -> dict:
        rng_states = D.gather_objects(self.ctx, rng.capture())
        return {
            "step": self.step, "clips_seen": self.step * self.clips_per_step, "skipped_steps": self.skipped_steps,
            "world_size": self.ctx.world_size,
            "optimizers": {k: p.optimizer.state_dict() for k, p in self.parts.items()},
            "schedulers": {k: p.scheduler.state_dict() for k, p in self.parts.items() if p.scheduler is not None},
            "scalers": {k: p.scaler.state_dict() for k, p in self.parts.items() if p.scaler is not None},
            "rng": rng_states,
            "ema_updates": None if self.ema is None else self.ema.updates,
            "data": {"samples_per_rank": self.step * self.tc.grad_accum * self.local_batch,
                     "world_size": self.ctx.world_size},
        }

    def save(self) -> pathlib.Path | None:
        state = self.training_state()  # collective: every rank takes part
        path = None
        if self.ctx.is_main:
            manifest = {"config": self._resolved_config(), "clips_seen": state["clips_seen"],
                        "world_size": self.ctx.world_size, "stage": self.section_name}
            path = ckpt.save_checkpoint(self.run_dir, self.step, self.weights(), state, manifest,
                                        keep=self.tc.keep_checkpoints)
        D.barrier(self.ctx)
        self.last_checkpoint = path or self.run_dir / "checkpoints" / f"step-{self.step:08d}"
        return path

    def _resolved_config(self) -> dict:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(self.cfg, resolve=True)

    def restore(self) -> None:
        checkpoint = ckpt.load_checkpoint(self.run_dir)
        saved = checkpoint.manifest.get("config", {})
        if checkpoint.manifest.get("stage") != self.section_name:
            raise ValueError(f"{checkpoint.dir} is a {checkpoint.manifest.get('stage')} checkpoint, not "
                             f"{self.section_name}")
        # Through JSON so that tuples from the dataclasses compare equal to the lists in the manifest.
        mine = json.loads(json.dumps(self._model_config()))
        for key, value in mine.items():
            if key not in ("autoencoder", "unet", "diffusion", "data") or key not in saved:
                continue
            if _with_defaults(key, saved[key]) != _with_defaults(key, value):
                raise ValueError(f"checkpoint {checkpoint.dir} was trained with a different `{key}` config "
                                 f"({saved[key]} vs {value}); resume with the run's own config")
        self.load_weights(checkpoint)
        state = checkpoint.state()
        self._note_new_settings(state)
        for k, p in self.parts.items():
            configured = [{h: g[h] for h in HYPERPARAMETERS if h in g} | {"lr": g.get("initial_lr", g["lr"])}
                          for g in p.optimizer.param_groups]
            p.optimizer.load_state_dict(state["optimizers"][k])
            if p.scheduler is not None:
                p.scheduler.load_state_dict(state["schedulers"][k])
            if p.scaler is not None and k in state["scalers"]:
                p.scaler.load_state_dict(state["scalers"][k])
            self._apply_hyperparameters(p, configured)
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.ema is not None:
            self.ema.updates = self._ema_updates(state, checkpoint)
        if state["world_size"] == self.ctx.world_size:
            rng.restore(state["rng"][self.ctx.rank])
        elif self.ctx.is_main:
            print(f"resuming a {state['world_size']}-process run on {self.ctx.world_size} processes: "
                  "the data order and global RNG streams differ from an uninterrupted run")
        self.last_checkpoint = checkpoint.dir

    EMA_WEIGHTS = "ema"  # the name a trainer saves its EMA weights under

    # settings added with the EMA warm-up (whose count training states hold since) that change what an
    # older run's next steps do; the EMA itself goes on as it was (see _ema_updates)
    BEHAVIOUR_SETTINGS = {"gan_alternate": False}  # setting -> what older versions did

    def _note_new_settings(self, state: dict) -> None:
        if "ema_updates" in state or not self.ctx.is_main:
            return
        for key, old in self.BEHAVIOUR_SETTINGS.items():
            if getattr(self.tc, key, old) != old:
                print(f"this checkpoint was written by an older pvdm_fast: the run continues with {key}="
                      f"{getattr(self.tc, key)} (pass {key}={str(old).lower()} to keep the old behaviour)")

    def _ema_updates(self, state: dict, checkpoint=None) -> int:
        """The EMA warm-up's position: saved by this version; None, or no EMA weights in the checkpoint,
        when the run had no EMA (it starts now, from the loaded weights). A checkpoint of an older version
        averaged with a constant decay: it goes on without the warm-up, as it was."""
        if checkpoint is not None and self.EMA_WEIGHTS not in checkpoint.manifest.get("weights", {}):
            return 0
        if "ema_updates" not in state:
            if self.ema.warmup and self.ctx.is_main:
                print("this checkpoint was written before the EMA warm-up existed: its EMA goes on with the "
                      "constant decay it had (a new run uses LitEma's warm-up)")
            self.ema.warmup = False
            return self.step // self.ema.every
        return int(state["ema_updates"] or 0)

    def _apply_hyperparameters(self, part: Part, configured: list[dict]) -> None:
        """The run's config wins over the checkpoint's optimizer state: a resume with `lr=`, `disc_lr=`,
        `betas=` or `weight_decay=` uses the new values (the schedule's position is kept). Groups
        whose values did not change are left untouched, so a plain resume stays bit-exact."""
        for i, (group, want) in enumerate(zip(part.optimizer.param_groups, configured)):
            for h, value in want.items():
                if h != "lr" and group.get(h) != value:
                    group[h] = value
            if part.scheduler is None:  # the lr is the group's own
                if group["lr"] != want["lr"]:
                    self._say_lr(part, group["lr"], want["lr"])
                    group["lr"] = want["lr"]
                continue
            base = group.get("initial_lr", group["lr"])  # the schedule multiplies the base lr
            if want["lr"] != base:
                self._say_lr(part, base, want["lr"])
                group["initial_lr"] = part.scheduler.base_lrs[i] = want["lr"]
            # as LambdaLR computes it: unchanged on a plain resume; new after a new base lr or a
            # schedule (warm-up, decay) this resume changed
            lr = want["lr"] * part.scheduler.lr_lambdas[i](part.scheduler.last_epoch)
            if group["lr"] != lr:
                group["lr"] = lr
                part.scheduler._last_lr = [g["lr"] for g in part.optimizer.param_groups]

    def _say_lr(self, part: Part, old: float, new: float) -> None:
        if self.ctx.is_main:
            print(f"{part.name}: lr {old:g} in the checkpoint, {new:g} from the config: using {new:g}")

    def _load_state(self, module: nn.Module, state_dict: dict, what: str) -> None:
        try:
            module.load_state_dict(state_dict)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ValueError(f"{what} in the checkpoint does not fit this model ({first}); "
                             "was it written by a run with a different config?") from None

    # ---- the loop --------------------------------------------------------------------------
    def _write_run_files(self) -> None:
        if not self.ctx.is_main:
            return
        from omegaconf import OmegaConf

        self.run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.cfg, self.run_dir / CONFIG_FILE)
        ckpt.write_json_atomic(self.run_dir / RUN_INFO, {"stage": self.section_name, **self.run_info})

    def run(self) -> dict:
        """Train to total_clips (or until SIGTERM/SIGINT); returns a summary dict."""
        if self.ctx.device.type == "cpu":
            with flush_denormals():
                return self._run()
        return self._run()

    def _run(self) -> dict:
        torch.manual_seed(self.tc.seed + self.ctx.rank)
        self.build()
        if self.resume:
            self.restore()
        data = self.dataset()
        if self.tc.eval_every:
            with rng.preserved():
                self.prepare_eval()
        # Only now, with the model, checkpoint and data accepted: a failed (re)start leaves the run's
        # saved arguments and metrics as they were.
        self._write_run_files()
        self.logger = RunLogger(self.run_dir, enabled=self.ctx.is_main, total_clips=self.total_steps * self.clips_per_step,
                                initial_clips=self.step * self.clips_per_step, desc=self.description,
                                tensorboard=self.tc.tensorboard, progress=self.progress,
                                resume_step=self.step if self.resume else None)
        interrupted = None
        try:
            with StopRequest() as stop:
                self._stop = stop
                stream = batch_stream(data, self.local_batch, rank=self.ctx.rank, world_size=self.ctx.world_size,
                                      seed=self.tc.data_seed, skip=self.step * self.tc.grad_accum * self.local_batch,
                                      num_workers=self.tc.num_workers, device=self.ctx.device)
                while self.step < self.total_steps:
                    # The stop check sits between fetching a step's data and training on it: a loader
                    # that fails because of the signal (a worker it reached) still ends in a save.
                    batches = self._next_batches(stream, stop)
                    if not D.all_true(self.ctx, stop.requested is None):
                        interrupted = stop.requested or "a signal on another rank"
                        break
                    metrics = self.train_step(batches)
                    self.step += 1
                    if self.ema is not None and self.ema_due():
                        self.ema.maybe_update(self.ema_module(), self.step)
                    self._after_step(metrics)
            if interrupted:
                self.logger.write(f"{interrupted}: saving a checkpoint at step {self.step} before exiting")
            if self.last_checkpoint is None or self.last_checkpoint.name != f"step-{self.step:08d}":
                self.save()
            exported = [] if interrupted or not self.ctx.is_main else self.export()
        finally:
            self.logger.close()
        return {"step": self.step, "clips_seen": self.step * self.clips_per_step, "interrupted": interrupted,
                "checkpoint": str(self.last_checkpoint), "exported": [str(p) for p in exported],
                "skipped_steps": self.skipped_steps}

    def _next_batches(self, stream, stop: StopRequest) -> list[dict] | None:
        """The next step's micro-batches; None when the loader failed after a stop was requested."""
        try:
            return [self._to_device(next(stream)) for _ in range(self.tc.grad_accum)]
        except Exception:
            if stop.requested is None:
                raise
            return None

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.ctx.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def eval_due(self) -> bool:
        """Every eval_every steps, and at the last step (the exported weights' numbers)."""
        return bool(self.tc.eval_every) and (self.step % self.tc.eval_every == 0 or self.step == self.total_steps)

    def _evaluate(self) -> dict[str, float]:
        """The held-out evaluation, isolated from training: the global generators are put back, no
        gradients, models are evaluated as copies (the training modules keep their mode)."""
        import time

        from pvdm_fast.train.evaluation import format_results

        start = time.time()
        with rng.preserved(), torch.no_grad():
            results = self.evaluate()
        self.logger.write(format_results(self.step, results, time.time() - start))
        return results

    def _after_step(self, metrics: dict[str, float]) -> None:
        clips = self.step * self.clips_per_step
        self.logger.advance(self.clips_per_step, {k.split("/")[-1] if k.endswith("/loss") else k: v
                                                  for k, v in metrics.items() if k.endswith("/loss")})
        checkpoint_due, eval_due = self.step % self.tc.checkpoint_every == 0, self.eval_due()
        saved = False
        if eval_due and (checkpoint_due or self.step == self.total_steps):
            # Before the evaluation: one that fails (e.g. out of memory beside the training) or is cut
            # short loses no training, and at the last step the run then resumes straight to its export.
            self.save()
            saved = True
        if eval_due and not D.all_true(self.ctx, self._stop is None or self._stop.requested is None):
            eval_due = False  # a signal came: save and exit first (the loop's next check), no evaluation
        # An evaluation joins its step's row (one row per step, which a resume truncates after its checkpoint).
        results = self._evaluate() if eval_due else {}
        if results or self.step % self.tc.log_every == 0 or self.step == self.total_steps:
            self.logger.log(self.step, clips, {**metrics, **results})
            self.history.append({"step": self.step, "clips": clips, **metrics, **results})
        if checkpoint_due and not saved:
            self.save()
        if self.tc.sample_every and self.step % self.tc.sample_every == 0 and self.ctx.is_main:
            self.sample()
