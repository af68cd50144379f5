"""Pretraining, top to bottom: set up, resume, take steps (log, checkpoint), finish.

Run by `fame-train pretrain` or `torchrun ... -m trainer pretrain` (DDP: gloo on CPU, NCCL on GPU). One step reads
a batch of (FAME query view, key view[, partner view]), computes the dual loss and takes an SGD step.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.loader import FameLoader
from pipeline.signals import Interrupted, deferred, interrupted
from pipeline.usage import UsageError
from trainer.backbones import build_backbone
from trainer.checkpoint import CheckpointError, load_checkpoint, load_init, save_checkpoint
from trainer.config import TrainConfig
from trainer.events import EventWriter
from trainer.micro import micro_loss
from trainer.moco import MoCo, check_queue


class TrainError(RuntimeError):
    """A run that cannot start or continue, with the reason."""


class RunFolderError(TrainError, UsageError):
    """`--out` holds a run and `--resume` was not given: the command must change (exit 2), nothing was touched."""


RUN_FILES = ("config.json", "checkpoint.pt", "log.jsonl")  # any of them means the folder holds a run


def check_run_folder(out: str | Path, resume: bool) -> None:
    """Refuse to start a fresh run in a folder that holds one: it would overwrite the checkpoint and the log."""
    if resume:
        return
    found = [name for name in RUN_FILES if (Path(out) / name).exists()]
    if found:
        raise RunFolderError(
            f"--out {out} already holds a run ({', '.join(found)}): add --resume to continue it, or give another --out"
        )


@dataclass
class Run:
    """What a run holds from set-up to its end: the parts built once and the number of steps taken."""

    config: TrainConfig
    device: torch.device
    rank: int
    world: int
    loader: FameLoader
    model: MoCo
    ddp: torch.nn.Module  # the model wrapped for DDP when world > 1, the model itself otherwise
    optimizer: torch.optim.Optimizer
    autocast: torch.autocast  # bfloat16 on GPU when config.amp, a no-op otherwise
    total: int  # steps in the whole run
    warmup: int  # steps of linear warm-up
    step: int = 0

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"


def pretrain(config: TrainConfig, resume: bool = False, progress: bool = True, max_steps: int | None = None) -> Path:
    """Train; returns the path of the final checkpoint. `max_steps` stops early (tests, benchmarks). A folder that
    holds a run is refused unless `resume` (check_run_folder)."""
    check_run_folder(config.out, resume)
    run = _start(config, resume)
    if resume:
        _resume(run)
    if run.rank == 0:
        _write_config(config, run.out)
        _trim_log(run.out / "log.jsonl", run.step)
    first, start = run.step, time.perf_counter()
    last = _train(run, run.total if max_steps is None else min(run.total, max_steps), progress)
    _finish(run)
    if run.rank == 0:
        print(_summary(run, run.step - first, time.perf_counter() - start, last), file=sys.stderr)
    return run.checkpoint


# --- set-up ---------------------------------------------------------------------------------------------------------


def _start(config: TrainConfig, resume: bool = False) -> Run:
    """Device, DDP and seeds, then the loader, the model and the optimizer (in that order: it fixes the random
    state the model starts from). A resumed run's weights come from its checkpoint, so `init` is not read then."""
    device = _device(config)
    torch.set_flush_denormal(True)  # denormal activations slow CPU convolutions many times over (no effect on GPU)
    rank, world = _setup_distributed(device)
    _seed(config)
    try:
        check_queue(config.queue_size, config.batch_size, world, config.symmetric)
    except ValueError as exc:
        raise TrainError(f"{exc}: raise --queue-size or lower --batch-size") from exc
    loader = FameLoader(
        config.cache,
        config.batch_size,
        videos=config.videos,
        params=config.loader_params(),
        device="gpu" if device.type == "cuda" else "cpu",
        shard_id=rank,
        num_shards=world,
        seed=config.seed,
    )
    model = _model(config, with_init=not resume).to(device)
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = make_optimizer(config, model.encoder_q.parameters())
    steps_per_epoch = len(loader)
    return Run(
        config=config,
        device=device,
        rank=rank,
        world=world,
        loader=loader,
        model=model,
        ddp=ddp,
        optimizer=optimizer,
        autocast=torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and config.amp),
        total=steps_per_epoch * config.epochs,
        warmup=steps_per_epoch * config.warmup_epochs,
    )


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints, logs and saves (DDP ranks are known once the process group
    is up, which `pretrain` starts from torchrun's WORLD_SIZE)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def _device(config: TrainConfig) -> torch.device:
    gpu = config.device in ("gpu", "cuda")
    if gpu and not torch.cuda.is_available():
        raise TrainError(f"--device {config.device}: torch finds no CUDA GPU on this machine; use --device cpu or auto")
    if gpu or (config.device == "auto" and torch.cuda.is_available()):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _setup_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def make_optimizer(config: TrainConfig, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with momentum (MoCo's), or AdamW; either follows the run's warm-up and cosine schedule of `lr`."""
    parameters = list(parameters)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum_sgd, weight_decay=config.weight_decay)


def _seed(config: TrainConfig) -> None:
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)


def _model(config: TrainConfig, with_init: bool = True) -> MoCo:
    """The MoCo model; its backbone starts from `config.init` when given (both encoders: the key encoder is a copy)."""
    backbone = build_backbone(config.backbone)
    if config.init and with_init:
        try:
            load_init(backbone, config.init)
        except CheckpointError as exc:
            raise TrainError(f"--init: {exc}") from exc
    return MoCo(
        backbone,
        config.dim,
        config.queue_size,
        config.moco_momentum,
        config.temperature,
        config.symmetric,
        bn_splits=config.bn_splits,
        shuffle_bn=config.shuffle_bn,
    )


def _resume(run: Run) -> None:
    """Continue from the run folder's checkpoint: model, optimizer, loader position, random state and step."""
    latest = run.checkpoint
    if not latest.exists():
        raise TrainError(f"--resume: no checkpoint at {latest}")
    state = load_checkpoint(latest)
    # --init chose where the run started; the checkpoint holds where it is now.
    diff = TrainConfig.from_dict(state["config"]).differences(run.config)
    if diff:
        raise TrainError(f"--resume: {latest} was made with other settings: {diff}")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.loader.load_state_dict(state["loader"])
    torch.set_rng_state(state["rng_cpu"])
    run.step = int(state["step"])


# --- the loop -------------------------------------------------------------------------------------------------------


def _train(run: Run, stop: int, progress: bool) -> float | None:
    """Take steps until `stop`, logging each and saving every `checkpoint_every`; returns the last step's loss (None
    when no step was left). Ctrl-C or SIGTERM lands between steps: the checkpoint is saved there and Interrupted
    raised."""
    last = None
    log = open(run.out / "log.jsonl", "a") if run.rank == 0 else None  # noqa: SIM115 - kept open for the run
    events = EventWriter(run.out / "tensorboard", run.step + 1) if run.rank == 0 and run.config.tensorboard else None
    # The bar counts to where this run stops (--max-steps), from where it starts (--resume).
    bar = tqdm(total=stop, initial=run.step, desc="pretrain", unit="step", disable=not progress or run.rank != 0)
    run.model.train()
    trained = run.loader.state_dict()  # the loader's position after the last step taken
    try:
        while run.step < stop:
            epoch = run.loader.state_dict()["epoch"]
            waited = time.perf_counter()
            for batch in run.loader:
                with deferred():  # a step is taken whole or not at all: Ctrl-C or SIGTERM stops the run after it
                    start = time.perf_counter()
                    loss, parts, lr = _step(run, batch)
                    end = time.perf_counter()
                    run.step += 1
                    trained = run.loader.state_dict()
                    record = _record(run, epoch, loss, parts, lr, wait=start - waited, span=end - waited)
                    last = record["loss"]
                    _write(log, bar, record, events)
                    if run.rank == 0 and run.step % run.config.checkpoint_every == 0:
                        _save(run)
                if run.step >= stop:
                    break
                waited = time.perf_counter()
    except KeyboardInterrupt as exc:  # between steps: the model, optimizer and log are those of `run.step`
        signum = interrupted(exc).signum
        run.loader.load_state_dict(trained)  # a batch fetched but not trained on is fetched again on resume
        if run.rank == 0:
            with deferred():
                _save(run)
        raise Interrupted(signum, f"stopped after step {run.step}, saved in {run.checkpoint}") from None
    finally:
        bar.close()
        if log:
            log.close()
        if events:
            events.close()
        run.loader.close()  # DALI's worker processes go now, not at exit
    return last


def _step(run: Run, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float], float]:
    """One SGD step on one batch at the scheduled learning rate; returns the loss, its parts and that rate."""
    batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
    lr = lr_at(run.step, run.total, run.warmup, run.config.lr)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with run.autocast:
        loss, parts = compute_loss(run.ddp, batch, run.config)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.device.type == "cuda":
        torch.cuda.synchronize()  # so the step's time is its own, not the next one's
    return loss, parts, lr


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def still(clips: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) clips with every frame replaced by the middle one: the clip's look without its motion."""
    middle = clips.shape[2] // 2
    return clips[:, :, middle : middle + 1].expand_as(clips).contiguous()


def compute_loss(model, batch: dict[str, torch.Tensor], config: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The dual loss: MoCo cross-entropy (with the semi-negative and background-negative columns when on) + weight x
    micro term (when on)."""
    extra = [batch[name] for name in config.loader_params().extra_views]
    if config.still_negatives:
        extra += [still(batch["query"]), still(batch["key"])]
    block = config.micro_block if config.micro else None
    logits, labels, *maps = model(batch["query"], batch["key"], extra, block)
    contrastive = F.cross_entropy(logits.float(), labels)
    parts = {"contrastive": float(contrastive.detach())}
    if not config.micro:
        return contrastive, parts
    query_map, key_map = maps[0]
    micro = micro_loss(query_map.float(), key_map.float())
    parts["micro"] = float(micro.detach())
    return contrastive + config.micro_weight * micro, parts


# --- logging and checkpoints ----------------------------------------------------------------------------------------


def _record(
    run: Run, epoch: int, loss: torch.Tensor, parts: dict[str, float], lr: float, wait: float, span: float
) -> dict[str, float | str]:
    """One line of log.jsonl. `span` is the time from the end of the last step to the end of this one, `wait` the
    part of it spent waiting for the batch: clips/s counts every rank's clips over the span. `timestamp` (UTC, ISO
    8601) says when the step ended, so a log lines up with other logs and a resumed run's gap shows."""
    span = max(span, 1e-9)
    return {
        "step": run.step,
        "epoch": epoch,
        "loss": float(loss.detach()),
        **parts,
        "lr": lr,
        "clips_per_s": run.config.batch_size * run.world / span,
        "data_wait": wait / span,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def _write(log: IO[str] | None, bar: tqdm, record: dict[str, float | str], events: EventWriter | None) -> None:
    """Append the record to the log (rank 0 has one) and to the TensorBoard events (with --tensorboard), and show it
    on the progress bar."""
    if log:
        log.write(json.dumps(record) + "\n")
        log.flush()
    if events:
        scalars = {f"pretrain/{k}": v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
        events.scalars(int(record["step"]), scalars)
    bar.update(1)
    bar.set_postfix(loss=f"{record['loss']:.3f}", wait=f"{record['data_wait']:.0%}")


def _save(run: Run) -> None:
    save_checkpoint(run.checkpoint, run.model, run.optimizer, run.loader, run.config, run.step)


def _trim_log(path: Path, step: int) -> None:
    """Keep the log's records of steps 1..step, the steps the checkpoint holds: a run stopped between checkpoints
    takes the later steps again after --resume, and a line torn by a kill is dropped. A fresh run starts it empty."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _write_config(config: TrainConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))


def _summary(run: Run, steps: int, seconds: float, last_loss: float | None) -> str:
    """The run's one closing line: what a user looks for once the progress bar is gone."""
    if not steps or last_loss is None:
        return f"pretrain: no step left to take (step {run.step} of {run.total}); checkpoint {run.checkpoint}"
    clips = steps * run.config.batch_size * run.world
    return (
        f"pretrain: {steps} steps (to step {run.step} of {run.total}) in {seconds:.1f} s, final loss {last_loss:.4f}, "
        f"{clips / max(seconds, 1e-9):.1f} clips/s"
    )


# --- the end --------------------------------------------------------------------------------------------------------


def _finish(run: Run) -> None:
    """Rank 0 saves the last checkpoint, says how many samples the loader left out and plots the curves; every rank
    waits for it."""
    if run.rank == 0:
        _save(run)
        if run.loader.skipped:  # each was warned about when first met; the total goes at the end, where it is read
            print(
                f"left out {sum(run.loader.skipped.values())} sample(s) of {len(run.loader.skipped)} damaged clip(s) "
                f"or undecodable video(s); `fame-cache verify {run.config.cache}` names them",
                file=sys.stderr,
            )
        from trainer.plot import plot_run

        plot_run(run.out)
    if dist.is_initialized():
        dist.barrier()
