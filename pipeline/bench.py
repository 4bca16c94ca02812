"""`tokenmill bench`: the corpus build throughput benchmark (bench/build_throughput.py), from the repository."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if not (REPO / "bench" / "build_throughput.py").is_file():
        print(f"tokenmill bench: {REPO / 'bench'} is missing; the benchmark runs from a checkout of the repository "
              "(pip install -e .), not from an installed wheel", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    return importlib.import_module("bench.build_throughput").main(argv)
