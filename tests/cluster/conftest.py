"""The cluster tests' world: an S3 API server (moto) with the sample corpus in a bucket, a fault-injecting proxy
in front of it (faults off until a test turns them on), a 3-node Ray cluster on 127.0.0.1 whose every process
reaches S3 through that proxy, and the reference: the same recipe built by one local process into a local
folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.s3_store import BUCKET, CORPUS, FaultProxy, S3Server
from pipeline.sample_corpus import sample_recipe
from tests.support.cluster import ObjectStore, RayCluster, build_env, start_cluster_build
from tests.support.faults import Run, tokenmill


@pytest.fixture(scope="session")
def object_store(sample_corpus: Path) -> Iterator[ObjectStore]:
    server = S3Server()
    proxy = FaultProxy(server.port, seed=16)
    try:
        server.upload(sample_corpus, CORPUS)
        yield ObjectStore(server, proxy)
    finally:
        proxy.stop()
        server.stop()


@pytest.fixture(scope="session")
def s3_reference(object_store: ObjectStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recipe over the bucket's inputs built by one local process (`--workers 1`, an embedded Ray) into a
    local folder, with the store's faults off: what every cluster build must equal, byte for byte."""
    folder = tmp_path_factory.mktemp("s3-reference")
    recipe = sample_recipe(CORPUS, folder)
    run = Run.start(
        tokenmill("build", str(recipe), "--out", str(folder / "out"), "--workers", "1", "--no-report"),
        folder / "build.stderr",
        env=build_env(object_store),
    )
    assert run.wait(timeout=600) == 0, run.stderr()[-3000:]  # wait() also stops whatever of the run is left
    return folder / "out"


@pytest.fixture
def cluster(object_store: ObjectStore) -> Iterator[RayCluster]:
    """A fresh head + 2 worker nodes of 1 CPU each; every process of theirs stopped by PID at the end."""
    cluster = RayCluster(object_store.env(), workers=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        assert cluster.pids() == [], "processes of the test cluster outlived it"


@pytest.fixture
def cluster_build(object_store: ObjectStore, cluster: RayCluster, tmp_path: Path) -> Iterator[Callable[[str], Run]]:
    """Starts `tokenmill build <the S3 recipe> --out s3://BUCKET/<name> --address <cluster>`; whatever of the
    run is left when the test ends (it failed half-way) is killed, by PID."""
    runs: list[Run] = []

    def start(name: str) -> Run:
        recipe = sample_recipe(CORPUS, tmp_path)
        stderr = tmp_path / f"{name}.stderr"
        runs.append(start_cluster_build(recipe, f"s3://{BUCKET}/{name}", cluster, object_store, stderr))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()
