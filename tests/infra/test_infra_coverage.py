"""Every file under infra/ is exercised or validated by a test in this folder (it names the file)."""
from __future__ import annotations

from tests.infra.infra_checks import INFRA, ROOT


def test_every_infra_file_is_checked_by_a_test():
    tests = "".join(p.read_text() for p in (ROOT / "tests" / "infra").glob("test_*.py"))
    files = [p.relative_to(ROOT).as_posix() for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files
    unchecked = [f for f in files if f'"{f}"' not in tests]
    assert not unchecked, f"no test in tests/infra names {unchecked}; validate or exercise them there"
