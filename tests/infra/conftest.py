from __future__ import annotations

import pytest

from tests.support import infra
from tests.support.infra import COVERAGE_TEST, cli_options

infra.record_infra_use()


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: `items` is what this session runs
def pytest_collection_modifyitems(config, items) -> None:
    """The coverage test checks what the other infra tests opened or ran: it goes last, and it is told which
    infra test modules this session runs."""
    here = infra.ROOT / "tests" / "infra"
    config.stash[infra.SESSION_MODULES] = {i.path.name for i in items if i.path.parent == here}
    items.sort(key=lambda i: i.path.parent == here and i.path.name == COVERAGE_TEST)  # stable: others keep their order


@pytest.fixture(scope="session")
def trainer_options() -> set[str]:
    """The options of `python -m trainer.train`, which every training launcher runs."""
    return cli_options("trainer.train")
