"""infra/kuberay/rayjob-build.yaml: the RayJob's structure (KubeRay's ray.io/v1 fields that it relies on) and
its entrypoint, which must be a `tokenmill build` the project accepts."""

from __future__ import annotations

import shlex

import ray

from pipeline import __version__
from pipeline.build.recipe import load_recipe
from tests.support.infra import ROOT, cli_options, long_options, yaml_documents

MANIFEST = "infra/kuberay/rayjob-build.yaml"


def rayjob() -> dict:
    [job] = yaml_documents(MANIFEST)
    return job


def containers(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    pods = (
        [cluster["headGroupSpec"]["template"]]
        + [g["template"] for g in cluster["workerGroupSpecs"]]
        + [job["spec"]["submitterPodTemplate"]]
    )
    return [c for pod in pods for c in pod["spec"]["containers"]]


def test_is_a_rayjob_that_cleans_up_after_itself():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__


def test_entrypoint_is_a_build_the_project_accepts():
    argv = shlex.split(rayjob()["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "pipeline.cli", "build"]
    recipe = argv[4]
    assert recipe.startswith("/app/")  # where infra/docker/Dockerfile puts the project
    load_recipe(ROOT / recipe.removeprefix("/app/"))
    assert argv[argv.index("--address") + 1] == "auto"
    assert argv[argv.index("--out") + 1].startswith("s3://")
    assert long_options(argv) <= cli_options("pipeline.cli", "build")


def test_head_runs_the_driver_and_workers_run_the_tasks():
    cluster = rayjob()["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265}
    [workers] = cluster["workerGroupSpecs"]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    resources = workers["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"]  # guaranteed QoS: build tasks are not evicted first
    cpus, memory_gi = int(resources["limits"]["cpu"]), int(resources["limits"]["memory"].removesuffix("Gi"))
    assert memory_gi >= 2 * cpus  # 2 GiB per 1-CPU build task
    mounts = {m["name"] for m in workers["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts <= {v["name"] for v in workers["template"]["spec"]["volumes"]}


def test_every_container_runs_this_tokenmill_image():
    for container in containers(rayjob()):
        assert container["name"]
        repository, tag = container["image"].rsplit(":", 1)
        assert repository.endswith("/tokenmill") and tag == f"{__version__}-cpu"
