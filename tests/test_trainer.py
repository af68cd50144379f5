"""Pretraining on a tiny cache: the loss falls, a resumed run repeats the uninterrupted one, bad input is refused."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import make_cache

from pipeline.loader import LoaderParams
from trainer.backbones import build_backbone
from trainer.checkpoint import CheckpointError, load_checkpoint
from trainer.config import TrainConfig
from trainer.train import TrainError, make_optimizer, pretrain


@pytest.fixture(scope="module")
def cache_url(tmp_path_factory) -> str:
    return make_cache(tmp_path_factory.mktemp("train_cache"), n_videos=16, textured=True)


LOADER_FIELDS = {f.name for f in dataclasses.fields(LoaderParams)}


def tiny(cache: str, out, **overrides) -> TrainConfig:
    """A few-second run; overrides name TrainConfig or LoaderParams fields."""
    base = dict(
        cache=cache,
        out=str(out),
        backbone="small",
        epochs=3,
        batch_size=4,
        queue_size=8,
        lr=0.05,
        warmup_epochs=1,
        checkpoint_every=1000,
        moco_momentum=0.9,
        seed=0,
    )
    loader = {"crop": 24, "num_workers": 0}
    for name, value in overrides.items():
        (loader if name in LOADER_FIELDS else base)[name] = value
    return TrainConfig(**base, loader=LoaderParams(**loader))


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["small", "r3d18", "r2plus1d18"])
def test_backbones_shapes(name):
    net = build_backbone(name).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    blocks = net.forward_blocks(x)
    assert len(blocks) == 5 and net(x).shape == (1, net.out_dim)
    assert blocks[-1].shape[1] == net.out_dim


def test_loss_goes_down_and_outputs_written(cache_url, tmp_path):
    # 16 videos, batch 4, a queue of one batch of keys: few false negatives, so the contrastive task is learnable
    # by the small network in 80 steps (the late/early loss ratio is 0.3-0.7 over seeds 0-4; fewer steps leave some
    # seeds near 0.9). Step 0 scores against the random initial queue: skipped.
    run = tmp_path / "run"
    config = tiny(cache_url, run, epochs=20, fame=False, augment=False, crop_scale=(0.8, 1.0))
    final = pretrain(config, progress=False)
    curve = losses(run)
    assert len(curve) == 20 * 4
    early, late = np.mean(curve[1:9]), np.mean(curve[-8:])
    assert late < 0.85 * early, f"loss did not fall: {early:.3f} -> {late:.3f}"
    state = load_checkpoint(final)
    assert state["step"] == 80 and TrainConfig.from_dict(state["config"]).backbone == "small"
    assert (run / "curves.png").stat().st_size > 1000 and (run / "config.json").exists()
    record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= record["data_wait"] <= 1.0 and record["clips_per_s"] > 0


def test_resume_continues_exactly(cache_url, tmp_path):
    whole = tmp_path / "whole"
    pretrain(tiny(cache_url, whole), progress=False)
    part = tmp_path / "part"
    pretrain(tiny(cache_url, part, checkpoint_every=3), progress=False, max_steps=5)
    # The run stopped after step 5 and saved its state; resuming runs steps 6.. exactly as the whole run did.
    pretrain(tiny(cache_url, part, checkpoint_every=3), resume=True, progress=False)
    assert losses(part) == pytest.approx(losses(whole), abs=0, rel=0)


def test_refusals(cache_url, tmp_path):
    with pytest.raises(TrainError, match="no checkpoint"):
        pretrain(tiny(cache_url, tmp_path / "none"), resume=True, progress=False)
    run = tmp_path / "run"
    pretrain(tiny(cache_url, run, epochs=1), progress=False)
    with pytest.raises(TrainError, match="other settings"):
        pretrain(tiny(cache_url, run, epochs=1, lr=0.5), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    from pipeline.loader import LoaderError

    with pytest.raises(TrainError, match=r"4 x 1 x 2 = 8, got 7"):
        pretrain(tiny(cache_url, tmp_path / "q", queue_size=7), progress=False)
    with pytest.raises(LoaderError, match="clip length"):
        pretrain(tiny(cache_url, tmp_path / "x", clip_len=16), progress=False)


def test_two_process_torchrun_step(cache_url, tmp_path):
    """`torchrun -m trainer pretrain`: both ranks train, rank 0 alone prints (the bar, the summary, the paths)."""
    out = tmp_path / "ddp"
    flags = ["--cache", cache_url, "--out", str(out), "--backbone", "small", "--epochs", "1", "--batch-size", "2"]
    flags += ["--queue-size", "64", "--warmup-epochs", "1", "--crop", "24", "--workers", "0", "--max-steps", "2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    result = subprocess.run(
        [*torchrun, "-m", "trainer", "pretrain", *flags], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(losses(out)) == 2 and all(np.isfinite(losses(out)))
    printed = result.stdout + result.stderr
    assert printed.count("checkpoint: ") == 1 and printed.count("final loss") == 1, printed[-3000:]
    assert "pretrain: 2 steps (to step 2 of" in printed and "2/2 [" in printed  # the bar counts to --max-steps


def test_every_loader_option_is_a_pretrain_flag_and_round_trips():
    from trainer.cli import build_parser
    from trainer.flags import config_from as _config_from

    flags = (
        "pretrain --cache c.zarr --mask-mode area --beta 0.4 --own-floor 0.2 --key-start cached --background frames "
        "--no-use-cache --workers 3 --crop-scale 0.5 1.0 --jitter 0.1 0.2 0.3 0.05 --bn-splits 4 --shuffle-bn --no-fame"
    )
    args = build_parser().parse_args(flags.split())
    config = _config_from(args)
    loader = config.loader
    assert (loader.mask_mode, loader.beta, loader.own_floor, loader.key_start) == ("area", 0.4, 0.2, "cached")
    assert (loader.background, loader.use_cache, loader.num_workers) == ("frames", False, 3)
    assert loader.crop_scale == (0.5, 1.0) and loader.jitter == (0.1, 0.2, 0.3, 0.05)
    assert (config.bn_splits, config.shuffle_bn, config.fame) == (4, True, False)
    assert config.loader_params().fame_p == 0.0
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    default = _config_from(build_parser().parse_args(["pretrain", "--cache", "c.zarr"]))
    assert default == TrainConfig(cache="c.zarr")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--mask-mode", "blob"])


def test_flat_configs_of_older_checkpoints_still_load():
    old = {"cache": "c", "backbone": "small", "crop": 56, "crop_scale": [0.5, 1.0], "workers": 1, "fame_p": 0.5}
    config = TrainConfig.from_dict(old)
    assert (config.loader.crop, config.loader.crop_scale, config.loader.num_workers) == (56, (0.5, 1.0), 1)
    assert config.loader.fame_p == 0.5


def test_saved_configs_without_newer_loader_options_load_as_they_were_trained():
    """A config.json saved before `own_margin` and `key_merge` existed (and with them today's defaults) must not
    resume with a margin and a merged key it never had; a fresh config has both."""
    saved = TrainConfig(cache="c").to_dict()
    for name in ("own_margin", "key_merge"):
        del saved["loader"][name]
    saved["loader"]["key_start"] = "any"
    old = TrainConfig.from_dict(json.loads(json.dumps(saved))).loader
    assert (old.own_margin, old.key_merge, old.key_start, old.own_floor) == (0.0, False, "any", 0.3)
    new = TrainConfig(cache="c").loader
    assert (new.own_margin, new.key_merge, new.key_start) == (0.3, True, "auto")


def test_curves_mark_epochs_smooth_the_loss_and_name_the_run(tmp_path):
    from trainer.plot import curves_figure, plot_run, smooth

    rng = np.random.default_rng(0)
    records = [
        {"step": s, "epoch": (s - 1) // 5, "loss": 3.0 + rng.normal(0, 0.5), "lr": 0.1, "clips_per_s": 1.0}
        for s in range(1, 21)  # 4 epochs of 5 steps: 3 epoch changes
    ]
    fig = curves_figure(records, "fame/run")
    for ax in fig.axes:
        marks = [line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == "epoch"]
        assert marks == [5.5, 10.5, 15.5]
    loss_ax = fig.axes[0]
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["total loss", "total loss, smoothed"]
    assert "fame/run" in fig._suptitle.get_text()
    noisy = [r["loss"] for r in records]
    assert np.std(smooth(noisy)[5:]) < 0.6 * np.std(noisy[5:])  # smoothing smooths
    assert np.allclose(smooth([2.0] * 10), 2.0)  # and does not pull the start towards 0
    run = tmp_path / "plain" / "run"
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot_run(run).stat().st_size > 1000


def test_heatmap_montage_labels_frames_leaves_gaps_and_has_a_colour_bar():
    from trainer.heatmap import BAR_GAP, BAR_W, GAP, LABEL_W, colour_map, montage

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 200, (3, 32, 40, 3), dtype=np.uint8)
    image = montage(frames, frames, [0, 4, 8], "clip")
    cw = 40 * 4  # scaled by a whole factor to at least CELL px
    height, width = image.shape[:2]
    assert width == LABEL_W + 3 * cw + 2 * GAP + BAR_GAP + BAR_W + 40
    grid_rows = slice(height - 2 * 128 - GAP - 6, height - 6)
    for i in range(3):
        x = LABEL_W + i * (cw + GAP)
        if i:
            assert (image[grid_rows, x - GAP : x] == 255).all()  # a white gap before each later frame
        assert (image[grid_rows, x : x + cw] != 255).any()
        assert (image[26:44, x : x + cw] < 100).any()  # its "frame N" label above it
    bar_x = LABEL_W + 3 * cw + 2 * GAP + BAR_GAP + BAR_W // 2
    column = image[:, bar_x]
    bar = column[(column != 255).any(axis=1)]
    assert (bar[0] == colour_map(np.ones((1, 1)))[0, 0]).all() and (bar[-1] == colour_map(np.zeros((1, 1)))[0, 0]).all()


def test_optimizer_is_sgd_with_momentum_or_adamw_and_unknown_names_are_refused():
    weights = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(TrainConfig(lr=0.2, momentum_sgd=0.8), weights)
    adamw = make_optimizer(TrainConfig(lr=0.003, weight_decay=0.01, optimizer="adamw"), weights)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.8 and sgd.defaults["lr"] == 0.2
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adamw, got 'adam'"):
        TrainConfig(optimizer="adam")
