"""Remote stores for real: a local S3-compatible server (moto in server mode) on 127.0.0.1, reached by s3fs.

Videos are uploaded to a bucket, a cache is built to s3:// by the real build, and fame-cache info/verify/ls/show read
it through the same fsspec URLs users would give. Configuration is the standard AWS environment (AWS_ENDPOINT_URL
and keys), so no code path takes test-only options.
"""

from __future__ import annotations

import json
import logging
import os

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from cache_tools import find_cache, list_caches, open_cache  # noqa: E402
from cache_tools.cli import main  # noqa: E402
from cache_tools.verify import verify_cache  # noqa: E402
from pipeline.build import build_cache  # noqa: E402
from pipeline.cache import DONE, PENDING  # noqa: E402
from pipeline.params import BuildParams  # noqa: E402

PARAMS = BuildParams(size=(32, 40), clip_len=4, stride=2, clips_per_video=2)
BUCKET = "fame-test"


@pytest.fixture(scope="module")
def s3(tiny_dataset):
    """A running S3 server with the tiny dataset uploaded under s3://BUCKET/videos; yields the s3fs filesystem."""
    import fsspec

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    try:
        fs.mkdir(BUCKET)
        fs.put(str(tiny_dataset), f"{BUCKET}/videos", recursive=True)
        yield fs
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        fs.clear_instance_cache()


def test_build_info_verify_ls_show_on_s3(s3, tmp_path, capsys):
    videos = f"s3://{BUCKET}/videos"
    assert len(s3.find(f"{BUCKET}/videos")) == 6
    root = f"s3://{BUCKET}/caches"
    assert find_cache(root, PARAMS) is None
    report = build_cache(videos, f"{root}/{PARAMS.params_hash()}.zarr", PARAMS, progress=False)
    assert report.n_done == 6
    url = find_cache(root, PARAMS)
    assert url == f"{root}/{PARAMS.params_hash()}.zarr"

    assert main(["info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["videos"]["done"] == 6 and info["clips"]["readable"] == 12 and info["source_root"] == videos
    stored = sum(s3.du(f"{BUCKET}/caches/{PARAMS.params_hash()}.zarr", total=False).values())
    assert info["bytes"]["on_disk"] == stored > 0
    assert info["bytes"]["source"] == sum(s3.du(f"{BUCKET}/videos", total=False).values())

    assert main(["verify", url, "--quiet"]) == 0
    assert [e.url for e in list_caches(root)] == [url]
    assert main(["ls", root]) == 0 and PARAMS.params_hash() in capsys.readouterr().out

    png = tmp_path / "s3.png"
    assert main(["show", url, "--out", str(png)]) == 0 and png.stat().st_size > 10_000

    # A replaced source object is caught, marked, and recomputed by a resumed build, all on S3.
    victim = f"{BUCKET}/videos/class_1/video_0.mp4"
    s3.pipe(victim, s3.cat(victim) + b"\0" * 64)
    problems = verify_cache(open_cache(url))
    assert [(p.kind, p.path) for p in problems] == [("source-changed", "class_1/video_0.mp4")]
    assert main(["verify", url, "--fix", "--quiet"]) == 1
    status = open_cache(url).videos("status")
    assert sorted(set(status)) == [DONE, PENDING] and (status == PENDING).sum() == 1
    again = build_cache(videos, url, PARAMS, resume=True, progress=False)
    assert again.n_done == 6 and again.n_computed >= 1
    assert verify_cache(open_cache(url)) == []


def test_writer_lock_on_s3_is_a_conditional_write(s3):
    """S3 refuses a second create of the lock object (If-None-Match: *), so one writer wins without a race window."""
    from pipeline.cache.lock import LOCK_NAME, LockError, read_holder, writer_lock

    url = f"s3://{BUCKET}/locked.zarr"
    key = f"{BUCKET}/locked.zarr/{LOCK_NAME}"
    with writer_lock(url, "fame-pipeline build") as mine:
        assert read_holder(url) == mine
        with pytest.raises(OSError, match="pre-conditions you specified did not hold"):
            s3.pipe_file(key, b"{}", mode="create")
        busy = pytest.raises(LockError, match="another process is writing this cache: fame-pipeline build")
        with busy, writer_lock(url, "fame-cache gc"):
            pass
        assert read_holder(url) == mine
    s3.invalidate_cache()
    assert not s3.exists(key)
