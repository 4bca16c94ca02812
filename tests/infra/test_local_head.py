"""infra/local/start-head.sh: a real head it starts (on 127.0.0.1 only, stopped by PID), its `ray start` command
(--dry-run), and its refusals. tests/pipeline/ops/test_jobs.py starts the head of its job-submission test with
it too."""

from __future__ import annotations

import os
import re
import socket
import subprocess

import pytest

from tests.support.faults import listening_sockets
from tests.support.infra import ROOT
from tests.support.ray_head import running_head

SCRIPT = "infra/local/start-head.sh"


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.run(
        ["bash", SCRIPT, *args], cwd=ROOT, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60
    )


PICKED = (
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--ray-client-server-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
    "--node-manager-port",
    "--object-manager-port",
)


def picked_ports(command: str) -> dict[str, int]:
    words = command.split()
    return {w: int(words[i + 1]) for i, w in enumerate(words) if w in PICKED}


def without_picked_ports(command: str) -> str:
    """The command without the ports the script picked free (they differ from run to run)."""
    return re.sub(r" (" + "|".join(PICKED) + r") \d+", "", command)


def test_every_other_server_gets_a_port_that_is_free_now():
    """Beside another Ray the dashboard agent's fixed 52365 was taken and `submit` failed
    obscurely; every server's port is picked free, distinct, and one given after `--` is kept."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = picked_ports(run_script("--dry-run").stdout)
        assert set(ports) == set(PICKED) and len(set(ports.values())) == len(PICKED)
        assert taken.getsockname()[1] not in ports.values() and 52365 not in ports.values()
        for port in ports.values():
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))  # free
        kept = run_script("--dry-run", "--", "--dashboard-agent-listen-port", "52366").stdout
        assert kept.count("--dashboard-agent-listen-port") == 1 and kept.endswith(
            "--dashboard-agent-listen-port 52366\n"
        )
        busy = run_script("--port", str(taken.getsockname()[1]))
        assert busy.returncode == 2 and f"--port {taken.getsockname()[1]}: the port is in use" in busy.stderr


def test_script_parses():
    assert subprocess.run(["bash", "-n", SCRIPT], cwd=ROOT).returncode == 0


@pytest.mark.slow
def test_the_script_starts_a_head_that_listens_on_localhost_only_and_stops_by_pid():
    with running_head() as head:  # on leaving: stopped, and no process of ours left
        addresses = {address for address, _, _ in listening_sockets(head.our_pids())}
        assert addresses  # GCS, raylet, dashboard, agents
        assert addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses
        assert "Jobs API and dashboard: http://127.0.0.1:" in (head.root / "head.log").read_text()


def test_dry_run_binds_every_server_to_localhost_and_requires_a_token_by_default():
    done = run_script("--dry-run")
    assert done.returncode == 0, done.stderr
    assert without_picked_ports(done.stdout) == (
        "RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --node-ip-address 127.0.0.1 --port "
        "6379 --dashboard-host 127.0.0.1 "
        "--dashboard-port 8265 --disable-usage-stats\n"
    )


def test_dry_run_with_every_option_and_passed_through_ray_options():
    done = run_script(
        "--host",
        "10.0.0.5",
        "--port",
        "7000",
        "--dashboard-port",
        "9000",
        "--num-cpus",
        "4",
        "--temp-dir",
        "/tmp/ray head",
        "--block",
        "--dry-run",
        "--",
        "--object-store-memory",
        "1000000000",
        env={"RAY_AUTH_MODE": "disabled"},
    )  # the user's say overrides the default
    assert done.returncode == 0, done.stderr
    assert without_picked_ports(done.stdout) == (
        "RAY_AUTH_MODE=disabled ray start --head --node-ip-address 10.0.0.5 --port 7000 --dashboard-host 10.0.0.5 "
        "--dashboard-port 9000 "
        "--disable-usage-stats --num-cpus 4 --temp-dir /tmp/ray\\ head --block --object-store-memory 1000000000\n"
    )


def test_wildcard_host_and_unknown_options_are_refused():
    wildcard = run_script("--host", "0.0.0.0", "--dry-run")
    assert wildcard.returncode == 2 and "give this machine's IP" in wildcard.stderr
    unknown = run_script("--dashboard", "--dry-run")
    assert unknown.returncode == 2 and "unknown option --dashboard" in unknown.stderr


def test_help_describes_the_options():
    done = run_script("--help")
    assert done.returncode == 0
    for option in (
        "--host IP",
        "--port N",
        "--dashboard-port N",
        "--num-cpus N",
        "--temp-dir DIR",
        "--block",
        "--dry-run",
    ):
        assert option in done.stdout
    assert "set -euo" not in done.stdout
