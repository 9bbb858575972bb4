"""The training loop: one plain function, read top to bottom.

`fit` resumes from the run folder's `checkpoint.pth` (model, optimizer, scheduler, loss scaler,
every process's RNG, iteration, best score) or starts from initial weights; then trains with SGD
or AdamW, warmup and step/cosine decay, gradient clipping, AMP on CUDA and DDP under `torchrun`;
validates every `eval_period` iterations and keeps the best model; checkpoints every
`checkpoint_period` iterations and when stopped by Ctrl-C / SIGTERM (at the end of the running
iteration); stops on a non-finite loss, keeping the last good checkpoint. Run folder:
checkpoint.pth, model_best.pth, model_final.pth, metrics.jsonl (one JSON object per line).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.config import SolverConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import atomic_path
from pipeline.models.checkpoints import read_checkpoint
from pipeline.models.inference import device_for
from pipeline.training.data import CocoInstances, TrainSampler, collate
from pipeline.training.loaders import worker_batches, worker_init


@dataclass(frozen=True)
class Context:
    """Where this process trains: its rank among `world_size` processes and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def distributed_context(device: str = "auto"):
    """This process's Context; under `torchrun` (WORLD_SIZE > 1) a process group around it.

    CUDA processes use NCCL, one GPU each (LOCAL_RANK); CPU processes use gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    target = device_for(device, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = target.type == "cuda"
    if cuda:
        torch.cuda.set_device(target)
    if world_size == 1:
        yield Context(0, 1, target)
        return
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield Context(dist.get_rank(), world_size, target)
    finally:
        dist.destroy_process_group()


def lr_factor(solver: SolverConfig, iteration: int) -> float:
    """Multiplier of base_lr at `iteration`: linear warmup, then step or cosine decay."""
    if solver.schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * iteration / max(solver.max_iter, 1)))
    else:
        passed = sum(iteration >= round(f * solver.max_iter) for f in solver.lr_steps)
        decay = solver.gamma**passed
    if iteration < solver.warmup_iters:
        alpha = iteration / solver.warmup_iters
        decay *= solver.warmup_factor * (1 - alpha) + alpha
    return decay


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save, atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class StopRequest:
    """Ctrl-C / SIGTERM ask the loop to stop after the running iteration; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this iteration (again to abort at once)")


def _rng_state(ctx: Context) -> list[dict[str, torch.Tensor]]:
    """Every process's torch RNG state (the detector samples anchors and proposals with it)."""
    own = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(ctx.device)
    if not ctx.distributed:
        return [own]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, own)
    return states


def _set_rng_state(ctx: Context, states: list[dict[str, torch.Tensor]]) -> None:
    if len(states) != ctx.world_size:
        tqdm.write(f"resuming {len(states)} processes' run on {ctx.world_size}: RNG not restored")
        return
    torch.set_rng_state(states[ctx.rank]["cpu"])
    if "cuda" in states[ctx.rank] and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(states[ctx.rank]["cuda"], ctx.device)


def _all_true(ctx: Context, *flags: bool) -> list[bool]:
    """Per flag: whether it holds in every process (one small all-reduce)."""
    if not ctx.distributed:
        return list(flags)
    t = torch.tensor([0 if f else 1 for f in flags], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [v == 0 for v in t.tolist()]


def build_optimizer(solver: SolverConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The solver's optimizer over `params`: SGD with momentum, or AdamW with beta1 = momentum."""
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(
            params,
            lr=solver.base_lr,
            betas=(solver.momentum, 0.999),
            weight_decay=solver.weight_decay,
        )
    return torch.optim.SGD(
        params, lr=solver.base_lr, momentum=solver.momentum, weight_decay=solver.weight_decay
    )


def fit(
    model: nn.Module,
    dataset: CocoInstances,
    solver: SolverConfig,
    run_dir: Path,
    meta: dict[str, Any],
    ctx: Context,
    init: Callable[[nn.Module], str] | None = None,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train `model` in `run_dir`; return {"score", "iteration"} of the best validation.

    meta (model_config, classes, params) goes into every checkpoint; a checkpoint.pth whose
    params differ from `meta["params"]` is not resumed: the run starts over.
    """
    label = "/".join(run_dir.parts[-2:])  # family/fold, or pretrain/family
    files = {name: run_dir / f"{name}.pth" for name in ("checkpoint", "model_best", "model_final")}
    metrics_path = run_dir / "metrics.jsonl"
    model.to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(solver, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(solver, i))
    amp_dtype = getattr(torch, solver.amp_dtype)
    # CUDA: either dtype; CPU: bfloat16 only (float16 autocast there is slow or unsupported)
    amp = solver.amp and (ctx.device.type == "cuda" or amp_dtype == torch.bfloat16)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

    # --- resume, or start from the initial weights
    start, best = 0, {"score": -math.inf, "iteration": 0}
    saved = read_checkpoint(files["checkpoint"]) if files["checkpoint"].is_file() else None
    if saved is not None and saved.get("params") == meta["params"]:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        start, best = saved["iteration"], saved["best"]
        _set_rng_state(ctx, saved["rng"])
        message = f"resuming {run_dir} at iteration {start}"
    else:
        if ctx.main:
            for path in [*files.values(), metrics_path]:
                path.unlink(missing_ok=True)
        message = init(model) if init is not None else "random weights"
        if saved is not None:
            message = f"{files['checkpoint']} has other settings: starting over; {message}"
    if ctx.main:
        tqdm.write(f"{label}: {message}")
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, start)

    def state(iteration: int, full: bool) -> dict[str, Any]:
        out = {**meta, "model": model.state_dict(), "iteration": iteration, "best": best}
        if full:
            out.update(
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                rng=_rng_state(ctx),
            )
        return out

    def diverged(iteration: int, what: str, value: torch.Tensor) -> CellpipeError:
        last = files["checkpoint"] if files["checkpoint"].is_file() else "none yet"
        return CellpipeError(
            f"{label}: {what} is {value.item()} at iteration {iteration}: training "
            f"diverged (lower solver.base_lr, raise solver.warmup_iters); the last good "
            f"checkpoint is {last}"
        )

    trained = model
    if ctx.distributed:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    sampler = TrainSampler(
        len(dataset),
        solver.seed,
        ctx.rank,
        ctx.world_size,
        start=start * solver.ims_per_batch * ctx.world_size,
    )
    loader = DataLoader(
        dataset,
        batch_size=solver.ims_per_batch,
        sampler=sampler,
        num_workers=solver.num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator(),  # leaves the global RNG (restored on resume) untouched
    )

    # --- the loop
    model.train()
    bar = tqdm(total=solver.max_iter, initial=start, desc=label, disable=not ctx.main, unit="it")
    window: dict[str, float] = {}
    skipped, n_window, tick = 0, 0, time.perf_counter()
    log_file = open(metrics_path, "a") if ctx.main else _nowhere()  # noqa: SIM115
    with StopRequest() as stop, log_file as log, worker_batches(loader) as batches:
        for iteration in range(start + 1, solver.max_iter + 1):
            images, targets = [], []
            while not images:  # a batch of only unreadable images is drawn again
                images, targets, n_skipped = next(batches)
                skipped += n_skipped
                if skipped > len(dataset) and not images:
                    raise CellpipeError(f"{label}: no readable training image")
            images = [im.to(ctx.device, non_blocking=True) for im in images]
            targets = [
                {k: v.to(ctx.device, non_blocking=True) for k, v in t.items()} for t in targets
            ]
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp):
                losses = trained(images, targets)
            loss = sum(losses.values())
            finite, keep_going = _all_true(ctx, bool(torch.isfinite(loss)), not stop.requested)
            if not finite:
                raise diverged(iteration, "loss", loss)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            norm = nn.utils.clip_grad_norm_(params, solver.clip_grad_norm or math.inf)
            if not scaler.is_enabled() and not torch.isfinite(norm):  # the same in every process
                raise diverged(iteration, "gradient norm", norm)
            lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            for name, value in {"loss": loss, **losses}.items():
                window[name] = window.get(name, 0.0) + value.item()
            n_window += 1
            bar.set_postfix(loss=f"{window['loss'] / n_window:.3f}", lr=f"{lr:.2e}", refresh=False)
            bar.update()
            if iteration % solver.log_period == 0 or iteration == solver.max_iter:
                rate = n_window * solver.ims_per_batch * ctx.world_size
                _log(
                    log,
                    iteration=iteration,
                    lr=lr,
                    images_per_s=rate / (time.perf_counter() - tick),
                    skipped_images=skipped,
                    **{k: v / n_window for k, v in window.items()},
                )
                window, n_window, tick = {}, 0, time.perf_counter()
            last = iteration == solver.max_iter
            due = last or (solver.eval_period and iteration % solver.eval_period == 0)
            if ctx.main and validate is not None and due:  # the other processes wait for it
                began = time.perf_counter()
                model.eval()
                scores = validate(model)
                model.train()
                _log(log, iteration=iteration, **{f"val_{k}": v for k, v in scores.items()})
                tqdm.write(f"{label} iteration {iteration}: {scores}")
                if scores["map_iou"] > best["score"]:
                    best = {"score": scores["map_iou"], "iteration": iteration}
                    save_checkpoint(files["model_best"], state(iteration, full=False))
                tick += time.perf_counter() - began  # validation time is not training time
            if last or not keep_going or iteration % solver.checkpoint_period == 0:
                full = state(iteration, full=True)  # every process joins the RNG gather
                if ctx.main:
                    save_checkpoint(files["checkpoint"], full)
            if not keep_going:
                bar.close()
                raise KeyboardInterrupt
    bar.close()
    if ctx.main:
        final = state(solver.max_iter, full=False)
        save_checkpoint(files["model_final"], final)
        if not files["model_best"].is_file():  # no validation: the final model is the best
            save_checkpoint(files["model_best"], final)
        if skipped:
            tqdm.write(f"{label}: skipped {skipped} unreadable images (see warnings)")
    if ctx.distributed:
        dist.barrier()
    return best


def _log(stream: Any, **record: Any) -> None:
    if stream is not None:
        stream.write(json.dumps(record) + "\n")
        stream.flush()


@contextmanager
def _nowhere():
    yield None


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop log lines after the resumed iteration (written after the last checkpoint)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if json.loads(ln)["iteration"] <= iteration]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{ln}\n" for ln in lines))
