"""The test layout tests/README.md describes: every source module has its own tests/<package>/<room>/test_<module>.py
(mirroring the module's folder) or one line in tests/README.md naming the tests that cover it, and every test file a
line names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "trainer", "manifests")
LINE = re.compile(rf"^- `(?P<module>(?:{'|'.join(PACKAGES)})/[a-z_0-9/]+\.py)`: (?P<covered_by>.+)$")


def readme_lines() -> dict[str, str]:
    lines = [LINE.match(line) for line in (ROOT / "tests" / "README.md").read_text().splitlines()]
    return {m["module"]: m["covered_by"] for m in lines if m}


def test_every_source_module_has_its_test_file_or_a_line_in_tests_readme():
    modules = sorted(
        p.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__init__.py"
    )
    assert len(modules) > 30
    lines = readme_lines()
    untested = [
        m
        for m in modules
        if not (ROOT / "tests" / Path(m).parent / f"test_{Path(m).name}").is_file() and m not in lines
    ]
    assert not untested, (
        f"add tests/<package>/test_<module>.py, or a line in tests/README.md naming the tests that cover {untested}"
    )
    stale = sorted(set(lines) - set(modules))
    assert not stale, f"tests/README.md names modules that no longer exist: {stale}"


def test_every_test_file_a_readme_line_names_exists():
    named = {path for covered_by in readme_lines().values() for path in re.findall(r"tests/[\w/]+\.py", covered_by)}
    assert named
    assert not [p for p in sorted(named) if not (ROOT / p).is_file()]
