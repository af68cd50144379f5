"""Pretraining, top to bottom: set up, build the loader and the model, loop, log, checkpoint, resume.

Run by `fame-train pretrain` or `torchrun ... -m trainer pretrain` (DDP: gloo on CPU, NCCL on GPU). One step reads
a batch of (FAME query view, key view[, partner view]), computes the dual loss and takes an SGD step.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.loader import FameLoader
from pipeline.signals import Interrupted, deferred, interrupted
from trainer.backbones import build_backbone
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.micro import micro_loss
from trainer.moco import MoCo, check_queue


class TrainError(RuntimeError):
    """A run that cannot start or continue, with the reason."""


def _setup_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _device(config: TrainConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: torch finds no CUDA GPU on this machine; use --device cpu or auto")
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def compute_loss(model, batch: dict[str, torch.Tensor], config: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The dual loss: MoCo cross-entropy (with the semi-negative and background-negative columns when on) + weight x
    micro term (when on)."""
    extra = [batch[name] for name in config.loader_params().extra_views]
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


def pretrain(config: TrainConfig, resume: bool = False, progress: bool = True, max_steps: int | None = None) -> Path:
    """Train; returns the path of the final checkpoint. `max_steps` stops early (tests, benchmarks)."""
    device = _device(config)
    torch.set_flush_denormal(True)  # denormal activations slow CPU convolutions many times over (no effect on GPU)
    rank, world = _setup_distributed(device)
    out = Path(config.out)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
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
    model = MoCo(
        build_backbone(config.backbone),
        config.dim,
        config.queue_size,
        config.moco_momentum,
        config.temperature,
        config.symmetric,
        bn_splits=config.bn_splits,
        shuffle_bn=config.shuffle_bn,
    ).to(device)
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.SGD(
        model.encoder_q.parameters(), lr=config.lr, momentum=config.momentum_sgd, weight_decay=config.weight_decay
    )
    steps_per_epoch = len(loader)
    total = steps_per_epoch * config.epochs
    warmup = steps_per_epoch * config.warmup_epochs
    step = 0
    if resume:
        latest = out / "checkpoint.pt"
        if not latest.exists():
            raise TrainError(f"--resume: no checkpoint at {latest}")
        state = load_checkpoint(latest)
        saved = TrainConfig.from_dict(state["config"])
        diff = saved.differences(config)
        if diff:
            raise TrainError(f"--resume: {latest} was made with other settings: {diff}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng_cpu"])
        step = int(state["step"])
    if rank == 0:
        _write_config(config, out)
        _trim_log(out / "log.jsonl", step)
    log = open(out / "log.jsonl", "a") if rank == 0 else None  # noqa: SIM115 - kept open for the run
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not progress or rank != 0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and config.amp)
    model.train()
    final = out / "checkpoint.pt"
    trained = loader.state_dict()  # the loader's position after the last step taken
    try:
        while step < total and (max_steps is None or step < max_steps):
            epoch = loader.state_dict()["epoch"]
            waited = time.perf_counter()
            for batch in loader:
                with deferred():  # a step is taken whole or not at all: Ctrl-C or SIGTERM stops the run after it
                    start = time.perf_counter()
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    lr = lr_at(step, total, warmup, config.lr)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    with autocast:
                        loss, parts = compute_loss(ddp if world > 1 else model, batch, config)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    end = time.perf_counter()
                    step += 1
                    trained = loader.state_dict()
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "loss": float(loss.detach()),
                        **parts,
                        "lr": lr,
                        "clips_per_s": config.batch_size * world / max(end - waited, 1e-9),
                        "data_wait": (start - waited) / max(end - waited, 1e-9),
                    }
                    if log:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", wait=f"{record['data_wait']:.0%}")
                    if rank == 0 and step % config.checkpoint_every == 0:
                        save_checkpoint(final, model, optimizer, loader, config, step)
                if step >= total or (max_steps is not None and step >= max_steps):
                    break
                waited = time.perf_counter()
    except KeyboardInterrupt as exc:  # between steps: the model, optimizer and log are those of `step`
        signum = interrupted(exc).signum
        loader.load_state_dict(trained)  # a batch fetched but not trained on is fetched again on resume
        if rank == 0:
            with deferred():
                save_checkpoint(final, model, optimizer, loader, config, step)
        raise Interrupted(signum, f"stopped after step {step}, saved in {final}") from None
    finally:
        bar.close()
        if log:
            log.close()
        loader.close()  # DALI's worker processes go now, not at exit
    if rank == 0:
        save_checkpoint(final, model, optimizer, loader, config, step)
        if loader.skipped:  # each was warned about when first met; the total goes at the end, where it is read
            print(
                f"left out {sum(loader.skipped.values())} sample(s) of {len(loader.skipped)} damaged clip(s) or "
                f"undecodable video(s); `fame-cache verify {config.cache}` names them",
                file=sys.stderr,
            )
        from trainer.plot import plot_run

        plot_run(out)
    if dist.is_initialized():
        dist.barrier()
    return final
