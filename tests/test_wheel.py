"""The installed product, not the checkout: build the wheel, install it into a fresh virtual environment outside
the checkout, and run the main commands from another folder. The environment reaches the dependencies already
installed for the tests (a path entry, which imports nothing of the checkout), so no download is needed."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from manifests.outputs import MANIFEST

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list, cwd: Path, timeout: int = 300) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `bin/` folder of a fresh venv holding only the wheel of this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", ROOT], tmp
    )
    (wheel,) = (tmp / "dist").glob("tokenmill-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp)
    purelib = Path(
        subprocess.check_output(
            [venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # the test environment's packages as a plain path: its .pth files (the checkout's editable install) stay unread
    (purelib / "test-dependencies.pth").write_text(
        "\n".join([sysconfig.get_paths()["purelib"], *site.getsitepackages()]) + "\n"
    )
    _run([venv / "bin/python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp)
    return venv / "bin"


@pytest.mark.slow
def test_the_installed_wheel_samples_builds_verifies_reports_and_inspects_from_another_folder(installed, tmp_path):
    where = _run(
        [installed / "python", "-c", "import manifests, pipeline; print(pipeline.__file__, manifests.__file__)"],
        tmp_path,
    )
    assert str(ROOT) not in where and "site-packages" in where  # the wheel's copy, not the checkout
    tokenmill = installed / "tokenmill"
    _run([tokenmill, "sample", "data/sample", "--size-mb", "0.5"], tmp_path)
    _run([tokenmill, "build", "sample", "--out", "runs/demo", "--workers", "1", "--no-report"], tmp_path)
    assert "ok:" in _run([tokenmill, "verify", f"runs/demo/{MANIFEST}"], tmp_path)
    _run([tokenmill, "stats", f"runs/demo/{MANIFEST}", "--out", "runs/demo/report"], tmp_path)
    assert json.loads((tmp_path / "runs/demo/report/stats.json").read_text())["shards"]
    assert "# from slimpajama: " in _run(
        [tokenmill, "inspect", f"runs/demo/{MANIFEST}", "--split", "validation", "--doc", "0"], tmp_path
    )
