"""The build on a multi-node Ray cluster (a head and two worker nodes on this machine, `ray.cluster_utils.Cluster`),
joined the way `--address` joins one: the same bytes as in-process, the package shipped to the workers, and a worker
node lost mid-build (its tasks run again elsewhere)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import zarr
from helpers import assert_same_cache

from pipeline.build import build_cache
from pipeline.cache import DONE, Cache
from pipeline.params import BuildParams
from synthetic import write_dataset

TINY = BuildParams(size=(32, 40), clip_len=4, stride=2, clips_per_video=2)
REPO = Path(__file__).resolve().parents[1]
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}


@pytest.fixture(scope="module")
def cluster():
    """A head and two worker nodes, one CPU each; shut down (every node's processes) at the end."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    nodes = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        workers = [nodes.add_node(**NODE) for _ in range(2)]
        nodes.wait_for_nodes()
        yield nodes, workers
    finally:
        if ray.is_initialized():
            ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """12 videos: 12 writer groups, more than the cluster runs at once."""
    root = tmp_path_factory.mktemp("cluster_videos")
    write_dataset(root, n_classes=3, videos_per_class=4, n_frames=32, seed=5)
    return root


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory) -> str:
    """The in-process build of `videos`."""
    out = str(tmp_path_factory.mktemp("reference") / "ref.zarr")
    report = build_cache(str(videos), out, TINY, progress=False)
    assert (report.mode, report.n_done) == ("in-process", 12)
    return out


def test_build_across_nodes_equals_in_process(cluster, videos, reference, tmp_path):
    nodes, _ = cluster
    out = str(tmp_path / "cluster.zarr")
    report = build_cache(str(videos), out, TINY, workers=3, address=nodes.address, progress=False)
    assert (report.mode, report.n_done, report.n_computed, report.clips_computed) == ("ray", 12, 12, 24)
    assert report.nodes >= 2, f"the groups ran on {report.nodes} node(s)"
    assert_same_cache(reference, out)


def test_workers_import_the_shipped_package(cluster, tmp_path, monkeypatch):
    """Nodes need only the dependencies: a job joined as --address joins gets this package from the driver, ahead of
    an installed copy (here the editable install is on the workers' path too, so the test asks where the import came
    from). Ray also puts the driver's working folder on its workers' path: run from one that does not hold it."""
    import ray

    from pipeline.runners import cluster_runtime_env

    @ray.remote(num_cpus=1)
    def where() -> str:
        import pipeline

        return os.path.realpath(pipeline.__file__)

    nodes, _ = cluster
    monkeypatch.chdir(tmp_path)
    ray.init(address=nodes.address, runtime_env=cluster_runtime_env(), log_to_driver=False)
    try:
        found = ray.get([where.remote() for _ in range(3)])
    finally:
        ray.shutdown()
    assert all("runtime_resources" in path and not path.startswith(str(REPO)) for path in found), found


def _remove_when_one_done(cluster, node, out: str, removed: list[float]) -> None:
    """Remove `node` once the build has committed its first video (the other groups are queued or running then)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            done = int((zarr.open_group(out, mode="r")["videos/status"][:] == DONE).sum())
        except Exception:  # not created yet
            done = 0
        if done >= 1:
            cluster.remove_node(node)
            removed.append(done)
            return
        time.sleep(0.05)


def test_node_lost_mid_build_retries_elsewhere(cluster, videos, reference, tmp_path):
    """Last in this file: the cluster keeps one worker node less."""
    nodes, workers = cluster
    out = str(tmp_path / "lost.zarr")
    removed: list[float] = []
    remover = threading.Thread(target=_remove_when_one_done, args=(nodes, workers[0], out, removed))
    remover.start()
    try:
        report = build_cache(str(videos), out, TINY, workers=3, address=nodes.address, progress=False)
    finally:
        remover.join()
    assert removed and removed[0] < 12, "the node was removed after the build ended"
    # Every video done once: none lost, none counted twice, and the bytes of the in-process build.
    assert (report.n_done, report.n_failed, report.n_computed, report.clips_computed) == (12, 0, 12, 24)
    assert len(Cache.open(out).readable_clips()) == 24
    assert_same_cache(reference, out)
