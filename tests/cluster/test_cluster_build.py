"""Builds on a real 3-node Ray cluster with inputs and `--out` on a real S3 API server: no task can rely on a
shared local disk, and the shards must equal a single local process's, byte for byte. Then the same with one
worker node killed mid-build, and with a flaky object store (503 SlowDown, connections reset mid-body)."""
from __future__ import annotations

import time
from pathlib import Path

import fsspec
import pytest

from tests.cluster.harness import (
    BUCKET,
    ObjectStore,
    RayCluster,
    events,
    s3_recipe,
    shard_bytes,
    stable_manifest,
    start_cluster_build,
)

pytestmark = pytest.mark.slow
LOCAL = fsspec.filesystem("file")


def nodes_running_tasks(cluster: RayCluster, run, seen: dict[str, set[str]], until=None) -> None:
    """Records, per node, the tasks its workers run, every 50 ms while the build runs (or until `until()`)."""
    while run.running() and not (until and until()):
        for node, titles in cluster.task_titles().items():
            seen.setdefault(node, set()).update(titles)
        time.sleep(0.05)


def assert_same_build(store: ObjectStore, out: str, reference: Path) -> dict:
    fs = store.server.fs
    assert shard_bytes(fs, out) == shard_bytes(LOCAL, str(reference))
    assert stable_manifest(fs, out) == stable_manifest(LOCAL, str(reference))
    return stable_manifest(fs, out)


def test_a_cluster_build_on_s3_equals_a_local_single_process_build(object_store, cluster, s3_reference, tmp_path):
    recipe = s3_recipe(tmp_path)
    out = f"{BUCKET}/cluster-build"
    run = start_cluster_build(recipe, f"s3://{out}", cluster, object_store, tmp_path / "build.stderr")
    seen: dict[str, set[str]] = {}
    nodes_running_tasks(cluster, run, seen)
    assert run.wait() == 0, run.stderr()[-3000:]
    assert_same_build(object_store, out, s3_reference)
    assert {node for node, titles in seen.items() if titles} == {"head", "w1", "w2"}, seen  # every node did work
    log = events(object_store.server.fs, out)  # the build log of a remote --out, uploaded beside the manifest
    assert {e["stage"] for e in log if e["event"] == "stage_done"} == {"process", "dedupe", "resolve", "mix", "shard"}
    assert sum(e["event"] == "task_done" for e in log) == sum(e["tasks"] for e in log if e["event"] == "stage_done")
