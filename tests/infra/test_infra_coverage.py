"""Every file under infra/ is really used by a test in this folder: read (and so parsed or validated) or run.

tests/infra/conftest.py records, through an audit hook, every infra file the session's tests open or pass to
a subprocess, and runs this test after the others. Naming a file in a test is not enough: a check that
never reads the file it names leaves the file unchecked, and this test says so.
"""

from __future__ import annotations

import pytest

from tests.support.infra import COVERAGE_TEST, ROOT, SESSION_MODULES, TOUCHED, infra_files


def test_every_infra_file_is_read_or_run_by_a_test(request):
    modules = {p.name for p in (ROOT / "tests" / "infra").glob("test_*.py")} - {COVERAGE_TEST}
    missing = sorted(modules - request.config.stash.get(SESSION_MODULES, set()))
    if missing:
        pytest.skip(
            f"it checks what the other infra tests open or run, and {missing} are not in this session: run all of "
            "tests/infra"
        )
    files = infra_files()
    assert files
    untouched = [f for f in files if f not in TOUCHED]
    assert not untouched, f"no test in tests/infra reads or runs {untouched}; validate or exercise them there"
