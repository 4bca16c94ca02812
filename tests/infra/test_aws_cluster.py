"""infra/aws/cluster.yaml: validated by Ray's own cluster-launcher code (defaults merged and checked against
Ray's config schema, as `ray up` does before it calls AWS), plus what a tokenmill build cluster needs."""

from __future__ import annotations

import fnmatch
import subprocess

import ray
from ray.autoscaler._private.util import prepare_config, validate_config

from pipeline.ops.jobs import NOT_SHIPPED
from tests.support.infra import ROOT, project_extras, yaml_documents

CONFIG = "infra/aws/cluster.yaml"


def cluster() -> dict:
    [config] = yaml_documents(CONFIG)
    return config


def test_ray_accepts_the_cluster_config():
    validate_config(prepare_config(cluster()))


def test_ray_rejects_a_broken_copy():
    """The check above is a real one: the same code refuses a misspelt key."""
    broken = cluster()
    broken["available_node_types"]["cpu-build"]["min_worker"] = 1
    try:
        validate_config(prepare_config(broken))
    except Exception as e:  # jsonschema.ValidationError
        assert "min_worker" in str(e)
    else:
        raise AssertionError("Ray accepted an unknown node-type key")


def test_head_takes_no_build_tasks_and_a_cpu_group_scales_for_builds():
    config = cluster()
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = nodes["cpu-build"]
    assert workers["min_workers"] == 0 and 0 < workers["max_workers"] <= config["max_workers"]
    assert not workers["node_config"]["InstanceType"].startswith(("p", "g"))  # CPU instances, not GPU ones


def test_dashboard_binds_to_localhost_and_workers_join_the_head():
    config = cluster()
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--port=6379" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])


def test_nodes_run_the_ray_of_this_project_and_install_it():
    config = cluster()
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    [(remote, local)] = config["file_mounts"].items()
    assert local == "."  # `ray up` runs from the project root
    [install] = config["setup_commands"]
    assert f'"{remote}[s3]"' in install and "s3" in project_extras()
    assert set(NOT_SHIPPED) <= set(config["rsync_exclude"])
    # what the install on the nodes builds from reaches them: no exclude drops a tracked file of the package
    package = subprocess.run(
        ["git", "ls-files", "pyproject.toml", "pipeline", "stages", "trainer", "manifests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"pyproject.toml", "manifests/manifest.schema.json", "manifests/recipes/sample.yaml"} <= set(package)
    names = [
        pattern.removeprefix("**/") for pattern in config["rsync_exclude"]
    ]  # rsync matches them per path component
    assert not [
        path for path in package if any(fnmatch.fnmatch(part, name) for part in path.split("/") for name in names)
    ]
