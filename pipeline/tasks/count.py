"""The count stage: what survived dedupe, per input file and per subset, read from the process outputs' document
tables and the removals.

A count task reads its key group's document tables and removed slices once and returns, per file, the kept
documents and tokens of each split (what the driver plans the mix groups from), the kept statistics per subset
(what the report shows) and the group's first removed documents per source, subset and dedupe step (from which
the driver chooses the duplicates' samples).
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass

import numpy as np

from manifests.keys import doc_keys
from pipeline.build.inputs import SPLITS
from pipeline.tasks import samples
from pipeline.tasks.dedupe import RemovedDocs, removed_of
from pipeline.tasks.lengths import BUCKETS, length_histogram
from pipeline.tasks.process import DOCS, Processed
from pipeline.work.store import Store
from stages.document import EXACT_DUPLICATE, NEAR_DUPLICATE

RECORD_VERSION = 2  # 2: `subset_tokens`, the kept tokens per split and subset of each file


@dataclass(slots=True)
class KeptDocs:
    """One file's documents after dedupe: its table, keys, where each document's tokens start, and the verdict."""

    columns: dict[str, np.ndarray]
    keys: np.ndarray
    starts: np.ndarray  # first token in the file's tokens.bin
    lengths: np.ndarray
    keep: np.ndarray  # survived dedupe
    exact: np.ndarray  # removed as an exact copy


def kept_docs(work: Store, folder: str, file_index: int, removed: RemovedDocs) -> KeptDocs:
    columns = dict(np.load(io.BytesIO(work.read_bytes(f"{folder}/{DOCS}"))))
    keys = doc_keys(file_index, columns["ordinal"])
    lengths = columns["length"].astype(np.int64) if len(keys) else np.zeros(0, np.int64)
    gone, exact_keys = removed.keys, removed.keys[removed.exact]
    return KeptDocs(
        columns,
        keys,
        np.cumsum(lengths) - lengths,
        lengths,
        ~np.isin(keys, gone, assume_unique=True),
        np.isin(keys, exact_keys, assume_unique=True),
    )


def count_kept(folder: str, files: list[Processed], resolved: str, work: Store) -> dict:
    """Per file: [documents, tokens] kept in each split, and the tokens kept per split and subset (index =
    the file's subset column); per "source/subset": duplicates removed and what was
    kept, with length histograms; the first removed documents per source, subset and step, from which the
    driver chooses the duplicates' samples (`pipeline.tasks.samples`)."""
    started = time.perf_counter()
    removed = removed_of(work, resolved, [f.file_index for f in files], survivors=True)
    per_file, per_subset, subsets, candidates, taken = {}, {}, {}, [], {}
    for f in files:
        d = kept_docs(work, f.folder, f.file_index, removed[f.file_index])
        split = d.columns["split"] if len(d.keys) else np.zeros(0, np.uint8)
        per_file[str(f.file_index)] = [
            [int((d.keep & (split == n)).sum()), int(d.lengths[d.keep & (split == n)].sum())]
            for n in range(len(SPLITS))
        ]
        subset = d.columns["subset"] if len(d.keys) else np.zeros(0, np.int64)
        per_subset[str(f.file_index)] = [
            np.bincount(subset[here], weights=d.lengths[here], minlength=len(f.subsets))
            .round()
            .astype(np.int64)
            .tolist()
            for here in (d.keep & (split == n) for n in range(len(SPLITS)))
        ]
        _add_subset_stats(subsets, f, d)
        gone = ~d.keep  # in key order, as the removed keys and their survivors are
        if gone.any():
            candidates += samples.candidates_of_file(
                f.source,
                f.subsets,
                d.keys[gone],
                d.columns["subset"][gone],
                d.exact[gone],
                removed[f.file_index].survivors,
                taken,
            )
    record = {
        "files": per_file,
        "subset_tokens": per_subset,
        "subsets": subsets,
        "duplicate_candidates": [asdict(c) for c in candidates],
        "documents": sum(c[0] for v in per_file.values() for c in v),
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def _add_subset_stats(out: dict, f: Processed, d: KeptDocs) -> None:
    for sid, name in enumerate(f.subsets):
        here = d.columns["subset"] == sid
        empty = [0] * BUCKETS
        s = out.setdefault(
            f"{f.source}/{name}",
            {
                EXACT_DUPLICATE: 0,
                NEAR_DUPLICATE: 0,
                "documents_kept": 0,
                "chars_kept": 0,
                "tokens_kept": 0,
                "char_hist": empty,
                "token_hist": empty,
            },
        )
        gone, kept = here & ~d.keep, here & d.keep
        s[EXACT_DUPLICATE] += int((gone & d.exact).sum())
        s[NEAR_DUPLICATE] += int((gone & ~d.exact).sum())
        s["documents_kept"] += int(kept.sum())
        s["chars_kept"] += int(d.columns["chars"][kept].sum())
        s["tokens_kept"] += int(d.lengths[kept].sum())
        s["char_hist"] = (np.asarray(s["char_hist"]) + length_histogram(d.columns["chars"][kept])).tolist()
        s["token_hist"] = (np.asarray(s["token_hist"]) + length_histogram(d.lengths[kept])).tolist()


def merge_subset_stats(records: list[dict]) -> dict[str, dict]:
    """The count tasks' subset statistics, summed (counts, and histograms bucket by bucket)."""
    total: dict[str, dict] = {}
    for r in records:
        for key, stats in r["subsets"].items():
            if key not in total:
                total[key] = {k: list(v) if isinstance(v, list) else v for k, v in stats.items()}
                continue
            t = total[key]
            for k, v in stats.items():
                t[k] = [a + b for a, b in zip(t[k], v)] if isinstance(v, list) else t[k] + v
    return dict(sorted(total.items()))
