from __future__ import annotations

import pytest

from tests.infra.infra_checks import cli_options


@pytest.fixture(scope="session")
def trainer_options() -> set[str]:
    """The options of `python -m trainer.train`, which every training launcher runs."""
    return cli_options("trainer.train")
