"""`tokenmill completion bash|zsh`: a script generated from the commands table and each
command's own parser, sourced in a real bash and asked what it completes."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from pipeline.cli import COMMANDS
from pipeline.completion import command_words
from tests.support.faults import ROOT, tokenmill


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> str:
    done = subprocess.run(tokenmill("completion", "bash"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    path = tmp_path_factory.mktemp("completion") / "tokenmill.bash"
    path.write_text(done.stdout)
    return str(path)


def complete(script: str, line: str) -> list[str]:
    """What bash completes for the command line `line` (its last word being completed), through the script."""
    words = line.split(" ")
    program = (
        f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
        "_tokenmill; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    done = subprocess.run(["bash", "-c", program], cwd="/", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_every_command_and_each_commands_options(script):
    assert set(complete(script, "tokenmill ")) == set(COMMANDS) | {"--help", "--version"}
    assert complete(script, "tokenmill bu") == ["build"]
    table = command_words()
    for name, words in table.items():
        if not words.subcommands:
            assert set(complete(script, f"tokenmill {name} --")) == set(words.options), name
    assert "--dry-run" in complete(script, "tokenmill build --d") and "--nproc" in complete(
        script, "tokenmill train --np"
    )
    assert set(complete(script, "tokenmill jobs ")) >= {"list", "status", "logs", "stop"}
    assert complete(script, "tokenmill jobs logs --f") == ["--follow"]
    assert set(complete(script, "tokenmill work ")) >= {"ls", "prune"}
    assert "sample" in complete(script, "tokenmill build sa")  # the packaged recipes' names


def test_every_option_of_every_command_is_in_the_script():
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "completion", "zsh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "bashcompinit" in done.stdout
    for name, words in command_words().items():
        assert name in done.stdout
        for option in words.options + [o for sub in words.subcommands.values() for o in sub.options]:
            assert option in done.stdout, (name, option)
