"""splitmix64 against the published reference sequence (Vigna's splitmix64.c seeded with 0)."""

from __future__ import annotations

import numpy as np

from manifests.hashing import GOLDEN_GAMMA, splitmix64, splitmix64_finalizer

# The first three outputs of splitmix64.c from state 0: the state advances by the golden gamma before each.
REFERENCE = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_splitmix64_gives_the_reference_sequence():
    states = np.arange(3, dtype=np.uint64) * GOLDEN_GAMMA
    assert splitmix64(states).tolist() == REFERENCE


def test_the_finalizer_is_splitmix64_without_the_step():
    x = np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)
    assert splitmix64_finalizer(x + GOLDEN_GAMMA).tolist() == splitmix64(x).tolist()
    assert splitmix64_finalizer(np.zeros(1, np.uint64)).tolist() == [0]  # zero is its fixed point: callers salt it
