"""infra/k8s/train.yaml: an Indexed Job + headless Service for multi-node torchrun. Checks that the pieces
fit together (names, ranks, GPUs, volumes) and that the commands are a stage-in and a trainer run the project
accepts."""

from __future__ import annotations

from pipeline import __version__
from tests.support.infra import cli_options, long_options, yaml_documents

MANIFEST = "infra/k8s/train.yaml"


def resources() -> tuple[dict, dict]:
    service, job = yaml_documents(MANIFEST)
    assert (service["apiVersion"], service["kind"]) == ("v1", "Service")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    return service, job


def torchrun_options(container: dict) -> dict[str, str]:
    args = container["args"]
    launcher = args[: args.index("-m")]
    return dict(arg.removeprefix("--").split("=", 1) for arg in launcher)


def trainer_args(container: dict) -> list[str]:
    args = container["args"]
    return args[args.index("trainer.train") + 1 :]


def test_one_pod_per_node_with_a_stable_name_for_rank_zero():
    service, job = resources()
    pod = job["spec"]["template"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert job["spec"]["completionMode"] == "Indexed"
    [trainer] = pod["spec"]["containers"]
    launcher = torchrun_options(trainer)
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(launcher["nnodes"])
    rank_zero = f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert launcher["rdzv-endpoint"] == f"{rank_zero}:{service['spec']['ports'][0]['port']}"
    assert launcher["rdzv-backend"] == "c10d"
    assert int(launcher["nproc-per-node"]) == trainer["resources"]["limits"]["nvidia.com/gpu"]


def test_shards_are_staged_where_the_trainer_reads_them():
    _, job = resources()
    spec = job["spec"]["template"]["spec"]
    [stage], [trainer] = spec["initContainers"], spec["containers"]
    assert stage["command"][:3] == ["tokenmill", "stage-in", "$(MANIFEST)"]
    assert {e["name"] for e in stage["env"]} == {"MANIFEST"}
    local_dir = stage["command"][3]
    args = trainer_args(trainer)
    assert f"--manifest={local_dir}/manifest.json" in args
    stage_mount = {m["mountPath"]: m["name"] for m in stage["volumeMounts"]}
    trainer_mount = {m["mountPath"]: m["name"] for m in trainer["volumeMounts"]}
    [(path, volume)] = [(p, v) for p, v in stage_mount.items() if local_dir.startswith(p + "/")]
    assert trainer_mount[path] == volume
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(stage_mount.values()) | set(trainer_mount.values()) <= set(volumes)
    assert volumes[trainer_mount["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "persistentVolumeClaim" in volumes[trainer_mount["/ckpt"]]  # every rank writes its checkpoint part
    assert any(a.startswith("--out=/ckpt/") for a in args)


def test_the_commands_pass_only_options_the_programs_know(trainer_options):
    _, job = resources()
    spec = job["spec"]["template"]["spec"]
    [stage], [trainer] = spec["initContainers"], spec["containers"]
    assert long_options(stage["command"][2:]) <= cli_options("pipeline.cli", "stage-in")
    assert long_options(trainer_args(trainer)) <= trainer_options
    assert {"manifest", "preset", "out"} <= {a.removeprefix("--").split("=")[0] for a in trainer_args(trainer)}


def test_both_containers_run_the_cuda_image_of_this_tokenmill():
    _, job = resources()
    spec = job["spec"]["template"]["spec"]
    for container in spec["initContainers"] + spec["containers"]:
        assert container["image"].endswith(f"/tokenmill:{__version__}-cu128")
