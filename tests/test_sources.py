"""Video lists as the datasets define them (UCF101, HMDB51 split files, Kinetics CSVs), and `--videos-root` on the
commands that read videos: a wrong root is named with the list line and the path looked for."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import make_cache

from pipeline.cli import main as pipeline_main
from pipeline.sources import SourceError, check_videos_exist, list_source
from trainer.backbones import build_backbone
from trainer.cli import build_parser, main
from trainer.config import TrainConfig

HMDB_CLASSES = ("brush_hair", "walk")


def hmdb_splits(folder, fold: int = 1) -> str:
    """Two classes' split files as HMDB51 writes them (trailing space included): a.avi train, b.avi test, c.avi
    unused, per class; returns the glob of the split."""
    folder.mkdir(parents=True, exist_ok=True)
    for label in HMDB_CLASSES:
        lines = [f"{label}_a.avi 1 ", f"{label}_b.avi 2 ", f"{label}_c.avi 0 ", ""]
        (folder / f"{label}_test_split{fold}.txt").write_text("\n".join(lines))
    return str(folder / f"*_test_split{fold}.txt")


def test_hmdb51_split_files_read_as_hmdb_defines_them(tmp_path):
    pattern = hmdb_splits(tmp_path / "splits")
    root = str(tmp_path / "hmdb51_org")
    train = list_source(pattern, root, split="train")
    assert [(e.path, e.label) for e in train.entries] == [
        ("brush_hair/brush_hair_a.avi", "brush_hair"),
        ("walk/walk_a.avi", "walk"),
    ]
    assert train.root == root
    test = list_source(pattern, root, split="test")
    assert [e.path for e in test.entries] == ["brush_hair/brush_hair_b.avi", "walk/walk_b.avi"]
    one = list_source(str(tmp_path / "splits" / "walk_test_split1.txt"), root, split="test")
    assert [e.path for e in one.entries] == ["walk/walk_b.avi"]
    assert test.entries[0].origin.endswith("brush_hair_test_split1.txt:2")


def test_hmdb51_refusals_name_the_file_and_line(tmp_path):
    pattern = hmdb_splits(tmp_path / "splits")
    with pytest.raises(SourceError, match=r"brush_hair_test_split1\.txt: an HMDB51 split file .*--split train\|test"):
        list_source(pattern)
    with pytest.raises(SourceError, match="split must be one of train, test"):
        list_source(pattern, split="val")
    (tmp_path / "splits" / "walk_test_split1.txt").write_text("walk_a.avi 1\nwalk_b.avi three\n")
    with pytest.raises(SourceError, match=r"walk_test_split1\.txt:2: expected 'NAME\.avi ID'"):
        list_source(pattern, split="train")
    hmdb_splits(tmp_path / "splits", fold=2)
    with pytest.raises(SourceError, match=r"splits 1, 2: name one"):
        list_source(str(tmp_path / "splits" / "*.txt"), split="train")
    with pytest.raises(SourceError, match=r"no videos in this folder; it holds HMDB51 split files"):
        list_source(str(tmp_path / "splits"))
    with pytest.raises(SourceError, match="no list file matches"):
        list_source(str(tmp_path / "nothing" / "*_test_split1.txt"), split="train")


KINETICS = """label,youtube_id,time_start,time_end,split
abseiling,--33Lscn6sk,4,14,train
"passing American football (in game)",-5MIXrUu3vE,0,10,train
air drumming,0AbC_dEf-12,120.0,130.0,train

"""


def test_kinetics_csv(tmp_path):
    (tmp_path / "train.csv").write_text(KINETICS)
    source = list_source(str(tmp_path / "train.csv"), str(tmp_path / "k400"))
    assert sorted((e.path, e.label) for e in source.entries) == [
        ("abseiling/--33Lscn6sk_000004_000014.mp4", "abseiling"),
        ("air drumming/0AbC_dEf-12_000120_000130.mp4", "air drumming"),
        (
            "passing American football (in game)/-5MIXrUu3vE_000000_000010.mp4",
            "passing American football (in game)",
        ),
    ]
    assert source.classes == ["abseiling", "air drumming", "passing American football (in game)"]
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\nxyz,1,11,test\n")
    assert [e.path for e in list_source(str(tmp_path / "test.csv")).entries] == ["xyz_000001_000011.mp4"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("abseiling,abc,4,x,train", r"bad\.csv:3: time_end must be whole seconds >= 0, got 'x'"),
        ("abseiling,abc,4.5,14,train", r"bad\.csv:3: time_start must be whole seconds"),
        ("abseiling,abc,4,14", r"bad\.csv:3: expected 5 fields"),
        ("abseiling,a/b,4,14,train", r"bad\.csv:3: youtube_id must be a non-empty name"),
        (",abc,4,14,train", r"bad\.csv:3: empty label"),
    ],
)
def test_kinetics_bad_lines_are_named(tmp_path, row, message):
    (tmp_path / "bad.csv").write_text(KINETICS.splitlines()[0] + "\nabseiling,ok,1,11,train\n" + row + "\n")
    with pytest.raises(SourceError, match=message):
        list_source(str(tmp_path / "bad.csv"))


def test_missing_listed_video_names_line_and_path(tmp_path):
    videos = tmp_path / "UCF-101"
    for rel in ("walk/a.avi", "run/b.avi"):
        (videos / rel).parent.mkdir(parents=True, exist_ok=True)
        (videos / rel).write_bytes(b"x")
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("walk/a.avi 1\nrun/b.avi 2\n")
    check_videos_exist(list_source(str(lists / "trainlist01.txt"), str(videos)))
    check_videos_exist(list_source(str(lists / "trainlist01.txt"), f"file://{videos}"))  # a local file URL
    with pytest.raises(SourceError) as info:
        check_videos_exist(list_source(str(lists / "trainlist01.txt")))
    message = str(info.value)
    assert "2 of 2 listed videos missing" in message
    assert f"trainlist01.txt:1: video not found: {lists / 'walk' / 'a.avi'}" in message
    assert "--videos-root" in message


def fake_checkpoint(path) -> str:
    """A checkpoint of the small backbone, as `fame-train pretrain` saves one (only what eval reads)."""
    backbone = build_backbone("small")
    config = TrainConfig(backbone="small", loader={"crop": 24})
    model = {f"encoder_q.0.{k}": v for k, v in backbone.state_dict().items()}
    torch.save({"model": model, "config": config.to_dict()}, path)
    return str(path)


def test_eval_reads_hmdb51_splits_under_videos_root(tmp_path, capsys):
    from synthetic import Scene, write_scene

    videos = tmp_path / "hmdb51_org"
    for c, label in enumerate(HMDB_CLASSES):
        for name in ("a", "b"):
            write_scene(videos / label / f"{label}_{name}.avi", Scene(size=(32, 40), n_frames=6, background_hue=90 * c))
    pattern = hmdb_splits(tmp_path / "splits")
    checkpoint = fake_checkpoint(tmp_path / "checkpoint.pt")
    args = ["eval", checkpoint, "--train", pattern, "--test", pattern, "--clip-len", "4", "--clips-per-video", "1"]
    args += ["--size", "32x40", "--protocol", "knn"]
    assert main(args) == 1
    err = capsys.readouterr().err
    looked_for = tmp_path / "splits" / "brush_hair" / "brush_hair_a.avi"  # the list's folder: no --videos-root
    assert f"brush_hair_test_split1.txt:1: video not found: {looked_for}" in err
    metrics = tmp_path / "metrics.json"
    assert main([*args, "--videos-root", str(videos), "--json", str(metrics)]) == 0
    assert set(json.loads(metrics.read_text())) == {"knn_top1", "setup"}


def test_pretrain_and_preview_take_videos_root(tmp_path, capsys):
    config = build_parser().parse_args(["pretrain", "--cache", "c.zarr", "--videos-root", "/data/UCF-101"])
    assert config.videos == "/data/UCF-101"
    url = make_cache(tmp_path / "data", n_videos=4, textured=True)
    moved = tmp_path / "moved"
    moved.mkdir()
    for folder in (tmp_path / "data").glob("class_*"):
        shutil.move(folder, moved / folder.name)  # a rename keeps the files' times: only the root changed
    out = str(tmp_path / "batch.png")
    args = ["preview", url, "--out", out, "--crop", "24", "--batch-size", "2", "--frames", "2"]
    assert pipeline_main(args) == 1
    looked_for = tmp_path / "data" / "class_0" / "video 0.mp4"
    assert f"vanished (not found at {looked_for})" in capsys.readouterr().err
    assert pipeline_main([*args, "--videos-root", str(moved)]) == 0


def test_build_reads_the_chosen_part_of_hmdb51_splits(tmp_path, capsys):
    from pipeline.cache import Cache
    from synthetic import Scene, write_scene

    videos = tmp_path / "hmdb51_org"
    for c, label in enumerate(HMDB_CLASSES):
        write_scene(videos / label / f"{label}_b.avi", Scene(size=(32, 40), n_frames=6, background_hue=90 * c))
    pattern = hmdb_splits(tmp_path / "splits")
    out = tmp_path / "hmdb-test.zarr"
    args = ["build", pattern, "--videos-root", str(videos), "--out", str(out), "--size", "32x40", "--clip-len", "4"]
    args += ["--clips-per-video", "1", "--quiet"]
    assert pipeline_main(args) == 1
    assert "choose one part (--split train|test)" in capsys.readouterr().err
    assert pipeline_main([*args, "--split", "test"]) == 0
    cache = Cache.open(str(out))
    table = cache.video_table()
    assert list(table["path"]) == ["brush_hair/brush_hair_b.avi", "walk/walk_b.avi"]
    assert list(table["label"]) == list(HMDB_CLASSES)
    with pytest.raises(SystemExit):
        pipeline_main([*args, "--split", "val"])
