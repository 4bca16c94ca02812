"""Training windows from a manifest's memory-mapped shards.

Windows: each shard's token stream is cut into windows of `context + 1` tokens starting every `context`
tokens (inputs = window[:-1], targets = window[1:], so every token but a shard's first is a target exactly
once). A window may span documents (they are separated by EOS, as in the manifest) but never two shards:
every window is then one contiguous slice of one memmap, read with no copy but the batch's. A shard loses its
last `(tokens - 1) % context` tokens, under one window per 100M-token shard.

Order: window positions 0, 1, 2, ... of an epoch are mapped to window indices by a seeded bijection of
[0, windows) (a Feistel network, `permute`), so the shuffle spans all shards and needs no permutation table
(TinyLlama's 950B tokens would need a 3.7 GB one per rank). Rank r of W reads positions r, r + W, r + 2W, ...:
disjoint by construction. Every rank reads `windows // W` per epoch, then the next epoch reshuffles.

The reader's state is (version, seed, world_size, epoch, position): the next window is exactly determined.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from manifests import Manifest, ManifestError
from manifests.shards import open_tokens, read_index

STATE_VERSION = 1
_FEISTEL_ROUNDS = 4


class DataError(ValueError):
    """Shards that do not match their manifest, or a reader state that cannot be resumed here."""


def check_shards(manifest: Manifest, split: str, *, checksums: bool, rank: int = 0, world_size: int = 1) -> None:
    """Sizes (and with `checksums` the sha256) of a split's shards against the manifest. Ranks share the hashing:
    rank r hashes shards r, r + W, ... ."""
    for i, shard in enumerate(manifest.shards(split)):
        problems = shard.check(checksums=checksums and i % world_size == rank)
        if problems:
            raise DataError(f"{problems[0]} (manifest {manifest.path}); re-copy the shard (`tokenmill stage-in`) or rebuild")


@dataclass(kw_only=True, slots=True)
class Cursor:
    epoch: int = 0
    position: int = 0  # windows this rank has read in this epoch


class TokenWindows:
    """The windows of one split: memmaps of its shards and where each shard's windows start."""

    def __init__(self, manifest: Manifest, split: str, context: int) -> None:
        self.context = context
        self.tokens: list[np.ndarray] = []
        counts = []
        for shard in manifest.shards(split):
            index = read_index(shard.idx_path)
            if index.dtype.name != manifest.data["dtype"]:
                raise DataError(f"{shard.idx_path}: tokens are {index.dtype.name}, manifest {manifest.path} says {manifest.data['dtype']}; rebuild")
            self.tokens.append(open_tokens(shard.bin_path, index))
            counts.append(max(0, (index.tokens - 1) // context))
        self.first_window = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
        if len(self) == 0:
            raise ManifestError(f"{manifest.path}: split {split!r} has no window of {context + 1} tokens; build more data or use a shorter context")

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
        left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << shift) | right


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit flips about half the output bits."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class WindowLoader:
    """Batches of `batch` windows for one rank, as (inputs, targets) int64 tensors on `device`.

    A background thread gathers batches ahead (pinned memory when the device is CUDA, so the copy overlaps
    compute); `state_dict()` describes the batches handed out, not those prefetched."""

    def __init__(self, windows: TokenWindows, *, batch: int, seed: int, rank: int, world_size: int, device: torch.device, prefetch: int = 4) -> None:
        self.windows, self.batch, self.seed = windows, batch, seed
        self.rank, self.world_size, self.device = rank, world_size, device
        self.per_rank = len(windows) // world_size
        if self.per_rank == 0:
            raise DataError(f"{len(windows)} windows cannot feed {world_size} ranks; build more data")
        self.cursor = Cursor()  # after the last batch handed out
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "seed": self.seed, "world_size": self.world_size, "epoch": self.cursor.epoch, "position": self.cursor.position}

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None:
            raise DataError("load_state_dict after reading began; load the state before the first batch")
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data state version {state.get('version')}, this trainer reads {STATE_VERSION}")
        if state["world_size"] != self.world_size:
            raise DataError(
                f"the checkpoint was written by {state['world_size']} ranks and this run has {self.world_size}; each rank's "
                f"window sequence depends on the rank count, so resume with --nproc {state['world_size']}"
            )
        if state["seed"] != self.seed:
            raise DataError(f"the checkpoint's data seed is {state['seed']}, this run's is {self.seed}; resume with --seed {state['seed']}")
        self.cursor = Cursor(epoch=state["epoch"], position=state["position"])

    def indices(self, cursor: Cursor, count: int) -> np.ndarray:
        """The next `count` window indices of this rank from `cursor`, which is advanced."""
        parts = []
        while count:
            take = min(count, self.per_rank - cursor.position)
            local = np.arange(cursor.position, cursor.position + take, dtype=np.int64)
            parts.append(permute(self.rank + self.world_size * local, len(self.windows), self._keys(cursor.epoch)))
            cursor.position += take
            count -= take
            if cursor.position == self.per_rank:
                cursor.epoch, cursor.position = cursor.epoch + 1, 0
        return np.concatenate(parts)

    def _keys(self, epoch: int) -> np.ndarray:
        return np.random.SeedSequence([self.seed, epoch]).generate_state(_FEISTEL_ROUNDS, dtype=np.uint64)

    def __iter__(self) -> "WindowLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, args=(Cursor(epoch=self.cursor.epoch, position=self.cursor.position),), daemon=True, name="window-prefetch")
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise DataError(f"the prefetch thread failed: {item!r}") from item
        batch, self.cursor = item
        batch = batch.to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def _produce(self, cursor: Cursor) -> None:
        pin = self.device.type == "cuda"
        try:
            while not self._stop.is_set():
                batch = torch.from_numpy(self.windows.gather(self.indices(cursor, self.batch)))
                item = (batch.pin_memory() if pin else batch, Cursor(epoch=cursor.epoch, position=cursor.position))
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


def open_loader(manifest: Manifest, split: str, *, context: int, batch: int, seed: int, rank: int, world_size: int, device: torch.device, prefetch: int = 4) -> WindowLoader:
    return WindowLoader(TokenWindows(manifest, split, context), batch=batch, seed=seed, rank=rank, world_size=world_size, device=device, prefetch=prefetch)
