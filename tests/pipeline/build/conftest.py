"""Fixtures of the build's tests: the embedded Ray that the driver and remix tests build on."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(scope="module")
def local_ray():
    """An embedded Ray of 2 CPUs for one test module, shut down after it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
