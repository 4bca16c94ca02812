"""Training windows from a manifest's memory-mapped shards: tokenmill's reader, public for any PyTorch loop.

    from trainer.data import WindowDataset
    dataset = WindowDataset("runs/x/manifest.json", "train", context=2048, seed=1234)  # rank, world size:
    torch.distributed's
    for inputs, targets in torch.utils.data.DataLoader(dataset, batch_size=8): ...
    state = dataset.state_dict()  # save it with the model; `load_state_dict(state)` continues after the last window
    read

(README.md's "Training with another framework" shows it in a plain loop, the one tests/support/plain_loop.py runs.)

Windows: each shard's token stream is cut into windows of `context + 1` tokens starting every `context`
tokens (inputs = window[:-1], targets = window[1:], so every token but a shard's first is a target exactly
once). A window may span documents (they are separated by EOS, as in the manifest) but never two shards:
every window is then one contiguous slice of one memmap, read with no copy but the batch's. A shard loses its
last `(tokens - 1) % context` tokens, under one window per 100M-token shard.

Order: one stream for all ranks, the epochs' permutations of the N windows back to back: stream position p is
window `permute(p mod N)` under the keys of epoch p // N (a seeded Feistel bijection of [0, N), so the shuffle
spans all shards and needs no table: TinyLlama's 950B tokens would need a 3.7 GB one per rank). Rank r of W
reads positions c + r, c + r + W, c + r + 2W, ... from the point c that all ranks have consumed together:
disjoint by construction. After each rank has read k windows the ranks have consumed exactly [c, c + kW), so
the state (epoch, position in it) does not depend on W and a run continues on any number of ranks.

Epoch ends: nothing is dropped, for any W. The last N mod W windows of an epoch are read in the same round as
the first windows of the next epoch's permutation, so a batch at the boundary holds windows of both epochs
(and, with a tiny N, possibly the same window once from each).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from manifests import Manifest, ManifestError
from manifests.hashing import splitmix64_finalizer
from manifests.manifest import load as load_manifest
from manifests.shards import open_tokens, read_index, read_index_header

__all__ = [
    "DataError",
    "TokenWindows",
    "WindowDataset",
    "WindowDomains",
    "WindowLoader",
    "check_shards",
    "check_state",
    "manifest_change",
    "open_loader",
    "permute",
]

# 1: (seed, world_size, epoch, windows read per rank in the epoch), each epoch's last N mod W windows dropped.
# 2: (seed, context, epoch, windows read by all ranks in the epoch, the shards' fingerprint): any world size.
STATE_VERSION = 2
_FEISTEL_ROUNDS = 4
_READ_AHEAD = 16  # windows `WindowDataset.__iter__` gathers at once


class DataError(ValueError):
    """Shards that do not match their manifest, or a reader state that cannot be resumed here."""


def check_shards(manifest: Manifest, split: str, *, checksums: bool, rank: int = 0, world_size: int = 1) -> None:
    """Sizes and index headers (and with `checksums` the tokens' sha256) of a split's shards against the
    manifest, and the indexes' sha256. Ranks share the hashing: rank r hashes shards r, r + W, ... ."""
    for i, shard in enumerate(manifest.shards(split)):
        mine = i % world_size == rank
        problems = shard.check(checksums=checksums and mine, index_checksum=mine)
        if problems:
            raise DataError(
                f"{problems[0]} (manifest {manifest.path}); re-copy the shard (`tokenmill stage-in`) or rebuild"
            )


class TokenWindows:
    """The windows of one split: memmaps of its shards and where each shard's windows start."""

    def __init__(self, manifest: Manifest, split: str, context: int) -> None:
        self.context = context
        self.tokens: list[np.ndarray] = []
        counts = []
        for shard in manifest.shards(split):
            index = read_index_header(shard.idx_path)
            if index.dtype.name != manifest.dtype:
                raise DataError(
                    f"{shard.idx_path}: tokens are {index.dtype.name}, manifest {manifest.path} says {manifest.dtype}; "
                    "rebuild"
                )
            self.tokens.append(open_tokens(shard.bin_path, index))
            counts.append(max(0, (index.tokens - 1) // context))
        self.first_window = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
        if len(self) == 0:
            raise ManifestError(
                f"{manifest.path}: split {split!r} has no window of {context + 1} tokens; build more data or use a "
                "shorter context"
            )

    def __len__(self) -> int:
        return int(self.first_window[-1])

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Windows `indices` as one (len(indices), context + 1) int64 array."""
        shards = np.searchsorted(self.first_window, indices, side="right") - 1
        starts = (indices - self.first_window[shards]) * self.context
        batch = np.empty((len(indices), self.context + 1), dtype=np.int64)
        for row, (shard, start) in enumerate(zip(shards, starts)):
            batch[row] = self.tokens[shard][start : start + self.context + 1]
        return batch


class WindowDomains:
    """The id (a domain's, or a source's for a build without domains: `Manifest.domain_names`) of the document
    that each target token of a split's windows belongs to. Reads every shard's whole index (18 bytes a
    document): meant for the validation split, which evaluation reports per domain."""

    def __init__(self, manifest: Manifest, split: str, windows: TokenWindows) -> None:
        self.windows = windows
        self.ends, self.ids = [], []
        for shard in manifest.shards(split):
            index = read_index(shard.idx_path)
            self.ends.append(index.doc_ends.astype(np.int64))
            self.ids.append(index.source_ids.astype(np.int64))

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """A (len(indices), context) int64 array: the id of each target token (window positions 1..context)."""
        context = self.windows.context
        shards = np.searchsorted(self.windows.first_window, indices, side="right") - 1
        starts = (indices - self.windows.first_window[shards]) * context
        out = np.empty((len(indices), context), dtype=np.int64)
        for row, (shard, start) in enumerate(zip(shards, starts)):
            positions = start + 1 + np.arange(context)
            out[row] = self.ids[shard][np.searchsorted(self.ends[shard], positions, side="right")]
        return out


def permute(x: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """A seeded bijection of [0, n), applied to each element of x: a Feistel network over the smallest
    even-bit power of two >= n, re-applied to values that land >= n ("cycle walking") until all are < n."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    out = np.asarray(x, dtype=np.uint64).copy()
    walking = np.ones(len(out), dtype=bool)
    while walking.any():
        out[walking] = _feistel(out[walking], half, keys)
        walking = out >= n
    return out.astype(np.int64)


def _feistel(x: np.ndarray, half: int, keys: np.ndarray) -> np.ndarray:
    mask, shift = np.uint64((1 << half) - 1), np.uint64(half)
    left, right = x >> shift, x & mask
    for key in keys:
        left, right = right, left ^ (splitmix64_finalizer(right ^ key) & mask)
    return (left << shift) | right


class WindowDataset(IterableDataset):
    """This rank's windows of a manifest split, endlessly (epoch after epoch, each reshuffled), as
    (inputs, targets) pairs of `context` int64 tokens; `state_dict()`/`load_state_dict()` continue after the last
    window handed out, on any number of ranks (the module docstring says how).

    `rank`/`world_size` default to torch.distributed's (0 and 1 without a process group). Every rank must read
    the same number of windows between two states, as data-parallel training does. In a DataLoader, use
    num_workers=0: `state_dict()` is then the loop's position. One worker process also reads correctly, but its
    position lives in the worker: only torchdata's StatefulDataLoader brings it back. Several workers would read
    the same windows and are refused."""

    def __init__(
        self,
        manifest: Manifest | str | Path,
        split: str = "train",
        *,
        context: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if rank is None or world_size is None:
            group = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if group else 0) if rank is None else rank
            world_size = (dist.get_world_size() if group else 1) if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} of world size {world_size}: the rank must be in [0, world size)")
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        self.split, self.seed, self.rank, self.world_size = split, seed, rank, world_size
        self.windows = TokenWindows(self.manifest, split, context)
        self.consumed = 0  # stream positions consumed by all ranks: epoch * len(windows) + position

    def indices(self, consumed: int, count: int) -> np.ndarray:
        """The window indices of this rank's next `count` windows once all ranks have consumed `consumed`."""
        n = len(self.windows)
        positions = consumed + self.rank + self.world_size * np.arange(count, dtype=np.int64)
        epochs = positions // n
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            keys = np.random.SeedSequence([self.seed, int(epoch)]).generate_state(_FEISTEL_ROUNDS, dtype=np.uint64)
            out[here] = permute(positions[here] - epoch * n, n, keys)
        return out

    def read(self, consumed: int, count: int) -> np.ndarray:
        """Those windows' tokens, a (count, context + 1) int64 array. Reads, changes no state."""
        return self.windows.gather(self.indices(consumed, count))

    def read_domains(self, consumed: int, count: int) -> np.ndarray:
        """The domain id of each target token of the same windows as `read`, a (count, context) int64 array
        (the shards' indexes are read whole the first time: meant for a validation split)."""
        if getattr(self, "_domains", None) is None:
            self._domains = WindowDomains(self.manifest, self.split, self.windows)
        return self._domains.gather(self.indices(consumed, count))

    def __iter__(self):
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise DataError(
                f"DataLoader(num_workers={info.num_workers}): each worker would read the same windows; use "
                "num_workers=0 or 1 (reading is a memmap slice, no decoding to spread)"
            )
        while True:
            for row in torch.from_numpy(self.read(self.consumed, _READ_AHEAD)):
                self.consumed += self.world_size
                yield row[:-1], row[1:]

    def state_dict(self) -> dict:
        epoch, position = divmod(self.consumed, len(self.windows))
        shards = shard_list(self.manifest, self.split)
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "context": self.windows.context,
            "epoch": epoch,
            "position": position,
            "fingerprint": shard_list_sha256(shards),
            "shards": shards,
        }

    def load_state_dict(self, state: dict, *, allow_manifest_change: bool = False) -> None:
        """Continue where `state` was saved, from any world size (`check_state` says what is refused). A
        version-1 state (tokenmill before elastic resume) continues exactly, except that at its epoch's end the
        N mod W windows version 1 would have dropped are read."""
        state = check_state(
            state,
            self.manifest,
            self.split,
            seed=self.seed,
            context=self.windows.context,
            allow_manifest_change=allow_manifest_change,
        )
        n = len(self.windows)
        self.consumed = state["epoch"] * n + state["position"] if state["position"] < n else (state["epoch"] + 1) * n

    def manifest_change(self, state: dict) -> str | None:
        return manifest_change(state, self.manifest, self.split)


def shard_list(manifest: Manifest, split: str) -> list[list[str]]:
    """What a split's windows are made of, as the manifest records it: each shard's `.bin` path and sha256."""
    return [[shard.entry.bin, shard.entry.bin_sha256] for shard in manifest.shards(split)]


def shard_list_sha256(shards: list[list[str]]) -> str:
    """What a state records of its shards (its "fingerprint"): the sha256 of their `shard_list`."""
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()


def check_state(
    state: dict, manifest: Manifest, split: str, *, seed: int, context: int, allow_manifest_change: bool = False
) -> dict:
    """`state` (any version this reader wrote) as the current version, if a reader of `manifest`'s `split` with
    this seed and context can continue it: another seed or context is refused, and shards other than the
    state's unless `allow_manifest_change`. Reads the manifest only, no shard."""
    state = _upgrade(state)
    if state["seed"] != seed:
        raise DataError(
            f"the checkpoint's data seed is {state['seed']}, this run's is {seed}; resume with --seed {state['seed']}"
        )
    if state["context"] not in (None, context):
        raise DataError(
            f"the checkpoint's windows are {state['context']} tokens, this run's {context}; resume with the "
            "checkpoint's model preset"
        )
    change = manifest_change(state, manifest, split)
    if change and not allow_manifest_change:
        raise DataError(
            f"{change}; the data order depends on the shards, so resume with the checkpoint's manifest, or accept the "
            "change "
            "(`tokenmill train --allow-manifest-change`, allow_manifest_change=True): the current epoch then continues "
            "in the new shards' order, which can repeat or skip windows until the epoch ends"
        )
    return state


def manifest_change(state: dict, manifest: Manifest, split: str) -> str | None:
    """What differs between the shards `state` was saved with and `manifest`'s `split`, in one sentence; None if
    nothing does (or for a version-1 state, which recorded no shards)."""
    state, shards = _upgrade(state), shard_list(manifest, split)
    if state["fingerprint"] in (None, shard_list_sha256(shards)):
        return None
    before, now = dict(state["shards"]), dict(shards)
    parts = [
        f"{len(names)} {what} ({', '.join(names[:3])}{' ...' if len(names) > 3 else ''})"
        for what, names in (
            ("removed", [b for b in before if b not in now]),
            ("added", [b for b in now if b not in before]),
            ("changed", [b for b in now if b in before and before[b] != now[b]]),
        )
        if names
    ] or ["the same shards in another order"]
    return f"the shards of split {split!r} in {manifest.path} changed since the checkpoint: {'; '.join(parts)}"


def _upgrade(state: dict) -> dict:
    """A state of the current version, from any version this reader has written."""
    version = state.get("version")
    if version == STATE_VERSION:
        return state
    if version == 1:  # positions per rank of `world_size` ranks; no shards or context recorded
        return {
            "version": STATE_VERSION,
            "seed": state["seed"],
            "context": None,
            "epoch": state["epoch"],
            "position": state["position"] * state["world_size"],
            "fingerprint": None,
        }
    raise DataError(
        f"data state version {version}, this tokenmill reads versions 1 and {STATE_VERSION}; resume with the tokenmill "
        "that wrote it"
    )


class WindowLoader:
    """The trainer's batches: `batch` windows of a WindowDataset at a time, as (inputs, targets) int64 tensors on
    `device`. A background thread gathers batches ahead (pinned memory when the device is CUDA, so the copy
    overlaps compute); `state_dict()` describes the batches handed out, not those prefetched."""

    def __init__(self, dataset: WindowDataset, *, batch: int, device: torch.device, prefetch: int = 4) -> None:
        self.dataset, self.batch, self.device = dataset, batch, device
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def windows(self) -> TokenWindows:
        return self.dataset.windows

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict, *, allow_manifest_change: bool = False) -> None:
        if self._thread is not None:
            raise DataError("load_state_dict after reading began; load the state before the first batch")
        self.dataset.load_state_dict(state, allow_manifest_change=allow_manifest_change)

    def __iter__(self) -> "WindowLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._produce, args=(self.dataset.consumed,), daemon=True, name="window-prefetch"
            )
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise DataError(f"the prefetch thread failed: {item!r}") from item
        batch, self.dataset.consumed = item
        batch = batch.to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def _produce(self, consumed: int) -> None:
        pin = self.device.type == "cuda"
        try:
            while not self._stop.is_set():
                batch = torch.from_numpy(self.dataset.read(consumed, self.batch))
                consumed += self.batch * self.dataset.world_size
                item = (batch.pin_memory() if pin else batch, consumed)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the consumer, which raises it with context
            self._queue.put(e)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def open_loader(
    manifest: Manifest,
    split: str,
    *,
    context: int,
    batch: int,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
    prefetch: int = 4,
) -> WindowLoader:
    dataset = WindowDataset(manifest, split, context=context, seed=seed, rank=rank, world_size=world_size)
    return WindowLoader(dataset, batch=batch, device=device, prefetch=prefetch)
