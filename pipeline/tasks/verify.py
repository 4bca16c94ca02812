"""Near-duplicate verification by node range: each removal checked against its cluster's kept documents by
estimated Jaccard (`stages.dedupe.verify_clusters`' verdicts), with no task holding a whole cluster.

`verify_clusters` goes through a cluster in key order: a member is removed for the first kept document it
matches best at the threshold (or as an exact copy), else kept, and then compared with later members. The kept
documents are the survivor and the members the survivor does not remove (the candidates) that no earlier kept
one removes, so the work splits in four stages, by the components' node ranges (consecutive files):
- signatures (survivor range j): its survivors' signatures, read once from its own files, sent to each range
  whose removals point to them (the removals' counts say which);
- verify (member range r): its removals compared with their survivors, its members' signatures read once
  from its own files; the candidates, with their signatures and their survivors', sent to the survivor's range;
- centers (survivor range j): each of its clusters' kept documents, from its candidates alone
  (`stages.dedupe.kept_centers`), sent to each range whose removals point to that cluster;
- verdicts (member range r): its members whose cluster keeps a document before them compared with those
  (`stages.dedupe.best_kept`), their signatures read again from its own files; what stays removed written as
  `removals` writes a range's, for the sizes and the streamed writer (`pipeline.tasks.components`).
Each input file's signatures are read by at most three tasks (its range's signatures, verify and verdicts) and
a giant cluster is spread over its members' ranges; the exchanges are one range read per (range, range), the
largest in pieces of SIGNATURE_BATCH rows. A range's signatures that a task needs in another order than they
come (a survivor range's to send, a member range's survivors') wait in a local file (`LocalRows`), not in
memory: what a task holds does not grow with its range.
"""

from __future__ import annotations

import mmap
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from manifests.keys import file_indices, ordinals
from pipeline.tasks.components import REMOVED_ROWS, write_counts
from pipeline.tasks.dedupe import Part, read_each, read_parts, read_records
from pipeline.tasks.process import SIGNATURES
from pipeline.work.store import Store
from stages import dedupe as dedupe_stage

SENT, MATCHES, CANDIDATES, CENTERS = "signatures.bin", "matches.bin", "candidates.bin", "centers.bin"
# signatures a task holds at once (a batch of whole files' members, or of rows read or gathered): 100,000 x
# 512 B = 51 MB at 256 values
SIGNATURE_BATCH = 100_000
SIMILARITY_BINS = 50  # the similarity histogram: estimated Jaccard in bins of 0.02


@dataclass(frozen=True, slots=True)
class Verification:
    """What every verify task is given besides its own inputs (each file's process folder is passed apart: the
    build shares one copy of that list with every task)."""

    width: int  # signature values a document (`minhash.permutations`)
    threshold: float  # estimated Jaccard a removal needs (`minhash.threshold`)
    cuts: list[int]  # the node ranges' bounds as doc keys (`pipeline.tasks.components.component_ranges`)

    @property
    def needed(self) -> int:
        return dedupe_stage.matches_needed(self.threshold, self.width)


class LocalRows:
    """Signature rows in a local temporary file, not in memory: appended in order, then gathered by position a
    batch at a time, each batch's pages given back after use (the page cache keeps them for the next)."""

    def __init__(self, width: int):
        self.dtype = np.dtype((np.uint16, (width,)))
        self.rows = 0
        self._file = tempfile.TemporaryFile()

    def __enter__(self) -> LocalRows:
        return self

    def __exit__(self, *_) -> None:
        self._file.close()

    def append(self, rows: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(rows, np.uint16).tobytes())
        self.rows += len(rows)

    def gather(self, at: np.ndarray) -> np.ndarray:
        """The rows at positions `at`, in that order."""
        out = np.empty((len(at),) + self.dtype.shape, np.uint16)
        if not len(at):
            return out
        self._file.flush()
        with mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            for i in range(0, len(at), SIGNATURE_BATCH // 8):  # a few thousand pages touched at a time
                view = np.frombuffer(mapped, self.dtype, self.rows)
                out[i : i + SIGNATURE_BATCH // 8] = view[at[i : i + SIGNATURE_BATCH // 8]]
                del view
                mapped.madvise(mmap.MADV_DONTNEED)
        return out


def keyed(width: int) -> np.dtype:
    """A document's signature with its key (SENT)."""
    return np.dtype([("key", "<u8"), ("sig", "<u2", (width,))])


def clustered(width: int) -> np.dtype:
    """A document's signature with its cluster's survivor and its own key (CANDIDATES, CENTERS)."""
    return np.dtype([("survivor", "<u8"), ("member", "<u8"), ("sig", "<u2", (width,))])


def send_signatures(
    folder: str, asks: Collection[Part], process_folders: list[str], check: Verification, work: Store
) -> dict:
    """Survivor range j: its survivors' signatures, per asking range (`asks`: each range's removals' counts of
    members per survivor, in j) the rows of the survivors it asked for, in key order."""
    started = time.perf_counter()
    asked = _asked(work, asks)
    wanted = np.unique(np.concatenate(asked)) if asked else np.zeros(0, np.uint64)
    width, offsets = check.width, [0]
    with LocalRows(width) as sigs, work.writer(f"{folder}/{SENT}") as out:
        for batch in _file_batches(wanted):
            sigs.append(signature_rows(work, process_folders, wanted[batch], width))
        for survivors in asked:
            for i in range(0, len(survivors), SIGNATURE_BATCH):
                rows = np.empty(len(survivors[i : i + SIGNATURE_BATCH]), keyed(width))
                rows["key"] = survivors[i : i + SIGNATURE_BATCH]
                rows["sig"] = sigs.gather(np.searchsorted(wanted, rows["key"]))
                out.write(rows.tobytes())
            offsets.append(offsets[-1] + len(survivors))
    record = {"survivors": int(len(wanted)), "sent_offsets": offsets, "seconds": time.perf_counter() - started}
    work.mark_done(folder, record)
    return record


def verify_range(
    folder: str,
    removals: str,
    sent: Collection[Part],
    process_folders: list[str],
    check: Verification,
    work: Store,
) -> dict:
    """Member range r: its removals (`removals`' rows by member) compared with their survivors (`sent`: one
    slice per survivor range); per member the equal values (MATCHES), and the candidates (neither an exact copy
    nor removed by the survivor) with their survivors, sorted, sliced by survivor range (CANDIDATES)."""
    started = time.perf_counter()
    rows = read_parts(work, [_all_rows(work, removals)], 3)
    members, survivors, exact = rows[:, 0], rows[:, 1], rows[:, 2].astype(bool)
    width = check.width
    wanted = np.unique(survivors)  # what the survivor ranges sent, in key order (slices of consecutive ranges)
    with LocalRows(width) as got:
        for group in _pieces(sent):
            for part, rows in zip(group, read_each(work, group, keyed(width))):
                if not np.array_equal(rows["key"], wanted[got.rows : got.rows + len(rows)]):
                    raise RuntimeError(f"{part.path}: holds other survivors than {folder}'s removals ask for; rerun")
                got.append(rows["sig"])
        at = np.searchsorted(wanted, survivors)
        matches, picked = np.zeros(len(members), np.int64), []
        for batch in _file_batches(members):
            sigs = signature_rows(work, process_folders, members[batch], width)
            matches[batch] = dedupe_stage.equal_values(sigs, got.gather(at[batch]))
            candidate = ~exact[batch] & (matches[batch] < check.needed)
            chosen = np.empty(int(candidate.sum()), clustered(width))
            chosen["survivor"], chosen["member"] = survivors[batch][candidate], members[batch][candidate]
            chosen["sig"] = sigs[candidate]
            picked.append(chosen)
        work.write_bytes(f"{folder}/{MATCHES}", matches.astype(np.uint16).tobytes())
        firsts = np.unique(np.concatenate([r["survivor"] for r in picked])) if picked else np.zeros(0, np.uint64)
        lead = np.empty(len(firsts), clustered(width))  # each cluster's survivor leads its candidates
        lead["survivor"], lead["member"] = firsts, firsts
        lead["sig"] = got.gather(np.searchsorted(wanted, firsts))
    out = np.concatenate([lead, *picked])
    out = out[np.lexsort((out["member"], out["survivor"]))]
    work.write_bytes(f"{folder}/{CANDIDATES}", out.tobytes())
    record = {
        "members": int(len(members)),
        "candidates": int(len(out) - len(lead)),
        "candidate_offsets": np.searchsorted(out["survivor"], np.asarray(check.cuts, np.uint64)).tolist(),
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def find_centers(
    folder: str, candidates: Collection[Part], asks: Collection[Part], check: Verification, work: Store
) -> dict:
    """Survivor range j: its clusters' kept documents beyond the survivor, from every range's candidates of its
    clusters; per asking range (`asks` as for `send_signatures`) those of the clusters it asked about."""
    started = time.perf_counter()
    rows = read_records(work, candidates, clustered(check.width))
    rows = rows[np.lexsort((rows["member"], rows["survivor"]))]
    if len(rows):  # a survivor leads its candidates in every range that has some: once is enough
        rows = rows[np.r_[True, (rows["member"][1:] != rows["member"][:-1])]]
    starts = np.r_[np.flatnonzero(rows["member"] == rows["survivor"]), len(rows)]
    centers = rows[
        dedupe_stage.kept_centers(rows["sig"], starts, check.threshold) & (rows["member"] != rows["survivor"])
    ]
    offsets = [0]
    with work.writer(f"{folder}/{CENTERS}") as out:
        for asked in _asked(work, asks) if len(centers) else []:  # none beyond the survivors: nothing to send
            mine = centers[np.isin(centers["survivor"], asked)]
            out.write(mine.tobytes())
            offsets.append(offsets[-1] + len(mine))
    offsets += [offsets[-1]] * (len(asks) + 1 - len(offsets))
    record = {
        "candidates": int(len(rows) - (len(starts) - 1)),
        "kept": int(len(centers)),
        "center_offsets": offsets,
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def verdicts(
    folder: str,
    removals: str,
    verified: str,
    centers: Collection[Part],
    process_folders: list[str],
    check: Verification,
    work: Store,
) -> dict:
    """Member range r: each member's verdict (removed for its survivor or for a kept document before it, or
    kept), what stays removed written as `removals` writes a range's (member, the kept document it is removed
    for, exact), and the similarity histogram (each member's estimated Jaccard with the document compared
    last). Its removals are taken SIGNATURE_BATCH at a time."""
    started = time.perf_counter()
    kept = read_records(work, centers, clustered(check.width))  # by (survivor, member): survivor ranges in order
    histogram = similarity_histogram(np.zeros(0), np.zeros(0, bool))
    every = _all_rows(work, removals)
    stayed, removed, exact_removed, compared_again = np.empty(every.end, np.uint64), 0, 0, 0
    with work.writer(f"{folder}/{REMOVED_ROWS}") as out:
        for part in [p for group in _pieces([every]) for p in group]:
            rows = read_parts(work, [part], 3)
            matches = np.frombuffer(
                work.read_range(f"{verified}/{MATCHES}", 2 * part.start, 2 * part.end), np.uint16
            ).astype(np.int64)
            removed_for, compared = _compared_with_kept(work, process_folders, rows, matches, kept, check.width)
            stays = rows[:, 2].astype(bool) | (matches >= check.needed)
            out.write(np.column_stack((rows[stays, 0], removed_for[stays], rows[stays, 2])).tobytes())
            part_histogram = similarity_histogram(matches / max(check.width, 1), stays)
            for name in ("removed", "kept"):
                histogram[name] = [a + b for a, b in zip(histogram[name], part_histogram[name])]
            stayed[removed : removed + int(stays.sum())] = removed_for[stays]
            removed += int(stays.sum())
            exact_removed += int(rows[stays, 2].sum())
            compared_again += compared
    record = {
        "removed": removed,
        "exact_removed": exact_removed,
        "count_offsets": write_counts(work, folder, stayed[:removed], check.cuts),
        "compared_again": compared_again,
        "similarity": histogram,
        "seconds": time.perf_counter() - started,
    }
    work.mark_done(folder, record)
    return record


def _compared_with_kept(
    work: Store, process_folders: list[str], rows: np.ndarray, matches: np.ndarray, kept: np.ndarray, width: int
) -> tuple[np.ndarray, int]:
    """Removals `rows` (member, survivor, exact) compared with the kept documents of their clusters before them
    (`kept`: by survivor, member); updates `matches` and returns each one's document removed for (its survivor
    unless a kept document matches better) and how many were compared."""
    members, survivors = rows[:, 0], rows[:, 1]
    first = np.searchsorted(kept["survivor"], survivors)
    # per member, the kept documents of its cluster before it: the position of (survivor, member) among the
    # kept documents' (survivor, member), less its cluster's first
    is_kept = np.r_[np.ones(len(kept), np.int64), np.zeros(len(members), np.int64)]
    order = np.lexsort((is_kept, np.r_[kept["member"], members], np.r_[kept["survivor"], survivors]))
    below = np.cumsum(is_kept[order]) - is_kept[order]
    before = np.zeros(len(members), np.int64)
    before[order[order >= len(kept)] - len(kept)] = below[order >= len(kept)]
    before -= first
    compared = np.flatnonzero(before > 0)
    removed_for = survivors.copy()
    for batch in _file_batches(members[compared]):
        which = compared[batch]
        best, best_m = dedupe_stage.best_kept(
            signature_rows(work, process_folders, members[which], width),
            first[which],
            first[which] + before[which],
            kept["sig"],
            matches[which],
        )
        matches[which] = best_m
        removed_for[which[best >= 0]] = kept["member"][best[best >= 0]]
    return removed_for, int(len(compared))


def _all_rows(work: Store, removals: str) -> Part:
    """A range's removals (REMOVED_ROWS, by member), whole."""
    return Part(f"{removals}/{REMOVED_ROWS}", 0, int(work.done(removals)["removed"]))


def similarity_histogram(similarity: np.ndarray, removed: np.ndarray) -> dict:
    """Counts of cluster members by estimated Jaccard with the document compared last, removed and kept."""
    bins = np.clip((similarity * SIMILARITY_BINS).astype(np.int64), 0, SIMILARITY_BINS - 1)
    return {
        "edges": np.linspace(0, 1, SIMILARITY_BINS + 1).round(2).tolist(),
        "removed": np.bincount(bins[removed], minlength=SIMILARITY_BINS).tolist(),
        "kept": np.bincount(bins[~removed], minlength=SIMILARITY_BINS).tolist(),
    }


def _asked(work: Store, asks: Collection[Part]) -> list[np.ndarray]:
    """Per asking range, the survivors its members point to (the first column of its counts slice)."""
    return [rows[:, 0] for rows in read_each(work, asks, np.dtype((np.uint64, (2,))))]


def _pieces(parts: Collection[Part]) -> list[list[Part]]:
    """The parts cut into pieces of at most SIGNATURE_BATCH rows (one range read each), in order, in groups of
    at most SIGNATURE_BATCH rows (read at once)."""
    groups, rows = [[]], 0
    for p in parts:
        for a in range(p.start, p.end, SIGNATURE_BATCH):
            piece = Part(p.path, a, min(a + SIGNATURE_BATCH, p.end))
            if rows + piece.end - piece.start > SIGNATURE_BATCH:
                groups, rows = groups + [[]], 0
            groups[-1].append(piece)
            rows += piece.end - piece.start
    return groups


def _file_batches(keys: np.ndarray) -> list[slice]:
    """Runs of `keys` (sorted doc keys) of whole input files, up to SIGNATURE_BATCH each (or one file's)."""
    files = file_indices(keys).astype(np.int64)
    bounds = np.r_[0, np.flatnonzero(files[1:] != files[:-1]) + 1, len(keys)]
    batches, start = [], 0
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if b - start > SIGNATURE_BATCH and a > start:
            batches.append(slice(start, a))
            start = a
    return batches + [slice(start, len(keys))] if len(keys) else batches


def signature_rows(work: Store, process_folders: list[str], wanted: np.ndarray, width: int) -> np.ndarray:
    """The compact signatures of the documents `wanted` (sorted doc keys), in that order. Per input file three
    range reads: the header, its ordinals, and the span of rows from the first wanted to the last."""
    files = file_indices(wanted).astype(np.int64)
    out = np.zeros((len(wanted), width), np.uint16)
    for f in np.unique(files):
        path = f"{process_folders[f]}/{SIGNATURES}"
        n, stored = np.frombuffer(work.read_range(path, 0, dedupe_stage.SIG_HEADER), np.uint64).astype(np.int64)
        sig_ordinals = np.frombuffer(
            work.read_range(path, dedupe_stage.SIG_HEADER, dedupe_stage.SIG_HEADER + 8 * n), np.uint64
        )
        mine = np.flatnonzero(files == f)
        at = np.searchsorted(sig_ordinals, ordinals(wanted[mine]))
        if (
            stored != width
            or np.any(at >= n)
            or not np.array_equal(sig_ordinals[np.minimum(at, n - 1)], ordinals(wanted[mine]))
        ):
            raise RuntimeError(
                f"{path}: lacks signatures of documents its keys.bin named (or holds {stored} values a document, "
                f"not the recipe's {width}); delete {process_folders[f]} and rerun the build"
            )
        start = dedupe_stage.SIG_HEADER + 8 * n + 2 * width * int(at.min())
        span = np.frombuffer(
            work.read_range(path, start, start + 2 * width * (int(at.max()) + 1 - int(at.min()))), np.uint16
        ).reshape(-1, width)
        out[mine] = span[at - at.min()]
    return out
