"""Security defaults: what the project starts listens on 127.0.0.1 only, unless the user asks for more. Every TCP
socket in LISTEN state of every process of the real command is recorded while it runs (conftest.py). The local
head of infra/local/start-head.sh is checked the same way by tests/pipeline/ops/test_jobs.py."""

from __future__ import annotations

import pytest

from tests.support.faults import is_loopback


def exposed(listening) -> list[tuple[str, int, str]]:
    return sorted(s for s in listening if not is_loopback(s[0]))


def test_the_embedded_ray_of_a_build_listens_on_loopback_only(reference_build):
    titles = {title for _, _, title in reference_build.listening}
    assert any("gcs_server" in t for t in titles) and any("raylet" in t for t in titles), titles  # Ray was seen
    assert exposed(reference_build.listening) == []


@pytest.mark.slow
def test_training_on_one_machine_listens_on_loopback_only(reference_training):
    assert reference_training.listening, "no listening socket was seen"
    assert exposed(reference_training.listening) == []
