"""splitmix64, the 64-bit mixer behind every seeded order that must not depend on who computes it: the build's
mix order (`stages.mix.hash_order`), the trainer's shuffle of windows (`trainer.data.permute`) and the
benchmark's synthetic keys (`bench/build_scale.py`). It lives in `manifests` because that is the one package
both `stages` and `trainer` may import (the trainer reads builds through `manifests` only)."""

from __future__ import annotations

import numpy as np

GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment: 2**64 / the golden ratio, odd


def splitmix64_finalizer(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function on uint64 values: every input bit flips about half the output bits."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 value of each uint64 `x` (one step of the generator from state x, wrapping at 2**64)."""
    return splitmix64_finalizer(x + GOLDEN_GAMMA)
