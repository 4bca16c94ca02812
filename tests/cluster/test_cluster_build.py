"""Builds on a real 3-node Ray cluster with inputs and `--out` on a real S3 API server: no task can rely on a
shared local disk, and the shards must equal a single local process's, byte for byte. Then the same with one
worker node killed mid-build, and with a flaky object store (503 SlowDown, connections reset mid-body)."""

from __future__ import annotations

import time
from pathlib import Path

import fsspec
import pytest

from bench.s3_store import BUCKET
from manifests.manifest import parse
from manifests.outputs import MANIFEST
from tests.support.cluster import ObjectStore, RayCluster, events, shard_bytes, stable_manifest

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


def test_a_cluster_build_on_s3_equals_a_local_single_process_build(object_store, cluster, cluster_build, s3_reference):
    out = f"{BUCKET}/cluster-build"
    run = cluster_build("cluster-build")
    seen: dict[str, set[str]] = {}
    nodes_running_tasks(cluster, run, seen)
    assert run.wait() == 0, run.stderr()[-3000:]
    manifest = assert_same_build(object_store, out, s3_reference)
    assert {node for node, titles in seen.items() if titles} == {"head", "w1", "w2"}, seen  # every node did work
    log = events(object_store.server.fs, out)  # the build log of a remote --out, uploaded beside the manifest
    assert {e["stage"] for e in log if e["event"] == "stage_done"} == set(manifest["stages"])  # rounds: several
    assert sum(e["event"] == "task_done" for e in log) == sum(e["tasks"] for e in log if e["event"] == "stage_done")


def test_a_worker_node_killed_mid_build_changes_nothing(object_store, cluster, cluster_build, s3_reference):
    out = f"{BUCKET}/node-killed"
    run = cluster_build("node-killed")
    seen: dict[str, set[str]] = {}
    nodes_running_tasks(
        cluster, run, seen, until=lambda: any(t.startswith("process/") for t in cluster.task_titles()["w2"])
    )
    assert run.running(), f"the build ended before node w2 ran a task:\n{run.stderr()[-3000:]}"
    lost = {t for t in cluster.task_titles()["w2"] if t.startswith("process/")}
    killed = cluster.kill_node("w2")  # its ray start, raylet, agents and the worker running a process task
    assert killed and cluster.pids("w2") == []
    assert run.wait() == 0, run.stderr()[-3000:]
    assert_same_build(object_store, out, s3_reference)
    log = events(object_store.server.fs, out)
    assert sum(e["event"] == "task_done" for e in log) == sum(e["tasks"] for e in log if e["event"] == "stage_done")
    assert lost <= {e["task"] for e in log if e["event"] == "task_done"}  # the lost task ran again, elsewhere


def test_a_flaky_object_store_is_retried_and_the_retries_are_counted(object_store, cluster_build, s3_reference):
    out = f"{BUCKET}/flaky-store"
    object_store.proxy.faults(slowdown=0.1, reset=0.1)  # of all requests 503 SlowDown; of GETs, cut mid-body
    try:
        run = cluster_build("flaky-store")
        assert run.wait() == 0, run.stderr()[-3000:]
    finally:
        injected, requests = dict(object_store.proxy.injected), object_store.proxy.requests
        object_store.proxy.faults()
    assert injected.get("slowdown", 0) > 0 and injected.get("reset", 0) > 0, (injected, requests)
    assert_same_build(object_store, out, s3_reference)
    stages = parse(object_store.server.fs.cat_file(f"{out}/{MANIFEST}"), f"{out}/{MANIFEST}").stages
    counted = sum(stage["retries"] for stage in stages.values())
    # every failed request of a task's or the driver's work and output store is retried and counted; the
    # input stream, the listing and the final writes after the last stage retry uncounted (s3fs's own retries)
    assert 0 < counted <= sum(injected.values()), (stages, injected)
    print(
        f"\nflaky store: {sum(injected.values())} faults {injected} in {requests} requests, {counted} retries counted "
        f"{ ({k: s['retries'] for k, s in stages.items()}) }"
    )
    log = events(object_store.server.fs, out)
    per_stage: dict[str, int] = {}  # the clustering's stages run in rounds: one stage_done each
    for e in log:
        if e["event"] == "stage_done":
            per_stage[e["stage"]] = per_stage.get(e["stage"], 0) + e["retries"]
    assert per_stage == {name: s["retries"] for name, s in stages.items()}
    assert 0 < sum(e["retries"] for e in log if e["event"] == "task_done") <= counted
