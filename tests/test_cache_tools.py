"""fame-cache on tiny caches made in the tests: info, verify (+ damage, --fix, build --resume), show, diff, ls, gc."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from helpers import SIZE, T, make_cache
from PIL import Image

from cache_tools import default_cache_path, find_cache, list_caches, open_cache
from cache_tools.cli import main
from cache_tools.diff import diff_caches, mask_iou
from cache_tools.gc import kept_sources
from cache_tools.show import clip_figure, load_view, merge, overlay
from cache_tools.verify import verify_cache
from pipeline.build import build_cache
from pipeline.cache import DONE, PENDING, Cache
from pipeline.params import BuildParams

TINY = BuildParams(size=SIZE, clip_len=T, stride=2, clips_per_video=2)


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def arrays(url: str) -> dict[str, np.ndarray]:
    c = Cache.open(url)
    return {k: c.root[k][:] for k in ("masks", "plates", "clips/checksum", "clips/frames")}


def shard_files(url: str, array: str) -> list[Path]:
    return sorted(p for p in (Path(url) / array / "c").rglob("*") if p.is_file())


@pytest.fixture
def cache(tmp_path) -> str:
    return make_cache(tmp_path, n_videos=6, fail=(3,), textured=True)


def test_info_counts_failures_and_bytes(cache, capsys):
    code, out = run(capsys, "info", cache, "--json")
    info = json.loads(out)
    assert code == 0
    assert info["videos"] == {"total": 6, "done": 5, "failed": 1, "pending": 0}
    assert info["clips"]["readable"] == 10 and info["clips"]["planned"] == 12
    assert info["failures"] == [{"path": "class_0/video 3.mp4", "error": "broken on purpose"}]
    assert info["params_hash"] == TINY.params_hash() and info["format_version"] == 2
    source = sum(os.path.getsize(os.path.join(os.path.dirname(cache), p)) for p in open_cache(cache).videos("path"))
    assert info["bytes"]["source"] == source
    on_disk = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
    assert info["bytes"]["on_disk"] == on_disk
    code, text = run(capsys, "info", cache)
    assert "5 done, 1 failed" in text and "broken on purpose" in text
    with pytest.raises(SystemExit) as stop:  # a path that names nothing: a usage error
        run(capsys, "info", str(Path(cache).parent / "nothing.zarr"))
    assert stop.value.code == 2
    assert run(capsys, "info", str(Path(cache).parent / "class_0"))[0] == 3  # a folder that is no cache


def test_verify_catches_flipped_bytes_deleted_shard_and_changed_source(cache, capsys):
    assert run(capsys, "verify", cache, "--quiet")[0] == 0
    # Flip bytes in the middle of the first masks shard (videos 0, 1), delete the last plates shard (videos 4, 5),
    # and change video 2's source file.
    first = shard_files(cache, "masks")[0]
    data = bytearray(first.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0xFF
    first.write_bytes(bytes(data))
    shard_files(cache, "plates")[-1].unlink()
    src = Path(cache).parent / "class_2" / "video 2.mp4"
    src.write_bytes(src.read_bytes() + b"\0" * 10)

    problems = verify_cache(open_cache(cache))
    by_video = {p.video for p in problems}
    assert by_video - {0, 1} == {2, 4, 5} and by_video & {0, 1}  # the flipped bytes lie in one of the first clips
    assert {p.kind for p in problems if p.video in (0, 1)} <= {"unreadable", "checksum"}
    assert {p.kind for p in problems if p.video in (4, 5)} == {"checksum"}  # a deleted shard reads back as zeros
    assert [p.kind for p in problems if p.video == 2] == ["source-changed"]

    code, out = run(capsys, "verify", cache, "--fix", "--quiet")
    assert code == 1 and "video 2.mp4" in out and "source-changed" in out
    c = open_cache(cache)
    status, errors = c.videos("status"), c.videos("error")
    assert [str(s) for s in status] == [PENDING if v in by_video else "failed" if v == 3 else DONE for v in range(6)]
    assert "source-changed" in errors[2] and errors[3] == "broken on purpose"
    assert run(capsys, "verify", cache, "--quiet")[0] == 0  # nothing left that claims to be done and is not


def test_verify_fix_then_resume_repairs(tiny_dataset, tmp_path, capsys):
    src = tmp_path / "videos"
    shutil.copytree(tiny_dataset, src)
    out = str(tmp_path / "c.zarr")
    build_cache(str(src), out, TINY, progress=False)
    reference = arrays(out)
    shard_files(out, "masks")[0].unlink()
    assert run(capsys, "verify", out, "--fix", "--quiet")[0] == 1
    marked = int((open_cache(out).videos("status") == PENDING).sum())
    assert marked >= 1
    report = build_cache(str(src), out, TINY, resume=True, progress=False)
    assert report.n_done == 6 and 0 < report.n_computed < 6
    assert run(capsys, "verify", out, "--quiet")[0] == 0
    repaired = arrays(out)
    assert all(np.array_equal(reference[k], repaired[k]) for k in reference)


def test_cache_root_shares_caches_and_ls_lists_them(tiny_dataset, tmp_path, capsys):
    from pipeline.cli import main as pipeline_main

    root = str(tmp_path / "caches")
    base = ["build", str(tiny_dataset), "--cache-root", root, "--size", "32x40", "--clip-len", "4", "--quiet"]
    assert pipeline_main([*base, "--clips-per-video", "2"]) == 0
    first = default_cache_path(root, TINY)
    assert find_cache(root, TINY) == first
    report = tmp_path / "again.json"
    assert pipeline_main([*base, "--clips-per-video", "2", "--report", str(report)]) == 0
    assert json.loads(report.read_text())["n_computed"] == 0
    other = BuildParams(size=SIZE, clip_len=T, stride=2, clips_per_video=1)
    assert find_cache(root, other) is None
    assert pipeline_main([*base, "--clips-per-video", "1"]) == 0
    assert find_cache(root, other) == default_cache_path(root, other) != first
    entries = {e.params_hash: e for e in list_caches(root)}
    assert set(entries) == {TINY.params_hash(), other.params_hash()}
    assert entries[other.params_hash()].n_clips == 6 and entries[TINY.params_hash()].n_clips == 12
    code, out = run(capsys, "ls", root, "--json")
    assert code == 0 and {e["params_hash"] for e in json.loads(out)} == set(entries)
    assert find_cache(str(tmp_path / "absent"), TINY) is None


def test_overlay_and_merge_are_exact_at_the_extremes():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    background = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    full, empty = np.full(SIZE, 255, np.uint8), np.zeros(SIZE, np.uint8)
    assert np.array_equal(merge(frame, full, background), frame)
    assert np.array_equal(merge(frame, empty, background), background)
    assert np.array_equal(overlay(frame, empty), frame)
    square = empty.copy()
    square[8:20, 10:26] = 255
    tinted = overlay(frame, square)
    assert np.array_equal(tinted[0], frame[0]) and not np.array_equal(tinted[12:16, 14:22], frame[12:16, 14:22])
    assert (tinted[8, 10:26] == (255, 255, 0)).all()  # the contour


def test_show_writes_png_gif_and_mp4(cache, tmp_path, capsys):
    png = str(tmp_path / "pics" / "clip.png")
    assert run(capsys, "show", cache, "--video", "class_1/video 4.mp4", "--out", png, "--gif", "--mp4")[0] == 0
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[0] > 400 and image.shape[1] > 3 * image.shape[0] // 2  # a grid wider than tall
    yellow = (image[..., 0] > 230) & (image[..., 1] > 230) & (image[..., 2] < 40)
    assert yellow.mean() > 0.002  # the mask's contour is drawn
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 1000  # real pictures (textured frames, plates, blends), not empty axes
    gif = Image.open(png[:-4] + ".gif")
    assert gif.n_frames == T and gif.size[0] > 3 * gif.size[1]
    with av.open(png[:-4] + ".mp4") as container:
        assert sum(1 for _ in container.decode(video=0)) == T
    assert run(capsys, "show", cache, "--clip", "6", "--out", png)[0] == 3  # video 3 failed: not readable
    with pytest.raises(SystemExit):
        main(["show", cache, "--clip", "0", "--video", "x", "--out", png])


@pytest.mark.parametrize("size", [SIZE, (64, 86), (96, 32)])  # the test cache's, the demo's, tall narrow ones
def test_show_clip_labels_collide_with_nothing(cache, size):
    """Every label of the --clip picture (titles, row names, heading, footnote) is clear of the other labels and of
    every picture, also when a frame is tall and narrow and a row name is the long 'source unavailable' one."""
    cache_obj = open_cache(cache)
    view = load_view(cache_obj, int(cache_obj.readable_clips()[0]))
    view.source_ok = False
    t = len(view.frame_numbers)
    if size != tuple(cache_obj.size):
        view.frames, view.masks = np.zeros((t, *size, 3), np.uint8), np.zeros((t, *size), np.uint8)
        view.plate = view.partner_plate = np.zeros((*size, 3), np.uint8)
        cache_obj = SimpleNamespace(size=size, attrs={}, url=cache_obj.url, params_hash=cache_obj.params_hash)
    fig = clip_figure(cache_obj, view)
    fig.canvas.draw()  # places the axis labels
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.texts if t.get_text()]  # the heading (suptitle) and the footnote
    texts += [t for ax in fig.axes for t in (ax.title, ax.yaxis.label) if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in texts]
    pictures = [ax.get_window_extent(renderer) for ax in fig.axes]
    assert len(texts) == 1 + 1 + min(t, 8) + 3 + 3  # footnote, heading, frame titles, plate titles, row names
    for i, box in enumerate(boxes):
        others = boxes[:i] + boxes[i + 1 :]
        assert not any(box.overlaps(o) for o in others + pictures), texts[i].get_text()
        inside = box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
        assert inside, texts[i].get_text()


def test_diff_matches_clips_and_measures_agreement(cache, capsys):
    c = open_cache(cache)
    same = diff_caches(c, c)
    assert same["mean_iou"] == 1.0 and same["clips"]["matched"] == 10 and not same["params"]
    fame = str(Path(cache).parent / "fame.zarr")
    build_cache(
        str(Path(cache).parent),
        fame,
        BuildParams(size=SIZE, clip_len=T, stride=2, clips_per_video=2, method="fame"),
        progress=False,
    )
    d = diff_caches(c, open_cache(fame))
    assert d["params"] == {"method": ["motion", "fame"]}
    assert d["clips"]["matched"] == 10 and d["videos_matched"] == 5  # the failed video has no clip in A
    assert 0.0 < d["mean_iou"] < 1.0 and d["min_iou"] <= d["mean_iou"]
    assert [w["mean_iou"] for w in d["worst"]] == sorted(d["per_video"].values())
    code, out = run(capsys, "diff", cache, fame)
    assert code == 0 and "method: 'motion' vs 'fame'" in out
    a = np.zeros((2, 4, 4), np.uint8)
    b = a.copy()
    a[:, :2], b[:, 1:3] = 200, 130
    assert mask_iou(a, b) == pytest.approx(1 / 3) and mask_iou(a * 0, b * 0) == 1.0


def test_gc_drops_failed_and_vanished_and_compacts(cache, capsys):
    os.remove(Path(cache).parent / "class_2" / "video 5.mp4")
    before = arrays(cache)
    old = open_cache(cache)
    kept_paths = [str(p) for p in old.videos("path")[[0, 1, 2, 4]]]
    old_first = {str(p): int(f) for p, f in zip(old.videos("path"), old.videos("first_clip"), strict=True)}
    listing = sorted(str(p) for p in Path(cache).rglob("*"))
    code, out = run(capsys, "gc", cache, "--dry-run")
    assert code == 0 and "video 3.mp4" in out and "video 5.mp4" in out and "would keep 4" in out
    assert sorted(str(p) for p in Path(cache).rglob("*")) == listing  # nothing written
    code, out = run(capsys, "gc", cache, "--json")
    report = json.loads(out)
    assert code == 0 and report["kept"] == 4 and len(report["dropped"]) == 2
    assert report["bytes_freed"] > 0 and report["bytes_freed"] == report["bytes_before"] - report["bytes_after"]
    new = open_cache(cache)
    assert [str(p) for p in new.videos("path")] == kept_paths
    assert (new.videos("status") == DONE).all() and len(new.readable_clips()) == 8 and new.n_slots == 8
    assert new.params_hash == TINY.params_hash()
    assert verify_cache(new) == []
    for path, f, n in zip(new.videos("path"), new.videos("first_clip"), new.videos("n_clips"), strict=True):
        o = old_first[str(path)]
        assert np.array_equal(new.root["masks"][f : f + n], before["masks"][o : o + n])
        moved = np.abs(new.root["plates"][f : f + n].astype(int) - before["plates"][o : o + n]).mean()
        assert moved <= 1.0  # plates are JPEG: a copy re-encodes them
    assert not any(".gc-" in p.name for p in Path(cache).parent.iterdir())  # its own copies are gone
    [record] = new.attrs["sources"]  # ls still says where the kept videos came from
    assert (record["source"], record["videos"], record["first_video"]) == (old.source_root, 4, 0)


def test_gc_renumbers_the_source_records_of_an_appended_cache():
    """Two sources (videos 0-3 and 4-6); gc keeps 1, 2, 5: the first record keeps two, the second one, renumbered."""
    records = [
        {"source": "train.txt", "videos": 4, "first_video": 0},
        {"source": "more/", "videos": 3, "first_video": 4},
    ]
    kept = kept_sources(records, np.array([1, 2, 5]), n_videos=7)
    assert kept == [
        {"source": "train.txt", "videos": 2, "first_video": 0},
        {"source": "more/", "videos": 1, "first_video": 2},
    ]
    assert kept_sources(records, np.array([4, 6]), n_videos=7) == [{"source": "more/", "videos": 2, "first_video": 0}]
