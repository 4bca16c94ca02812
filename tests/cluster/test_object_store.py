"""`pipeline.work.store.Store` on a real S3 API (moto) through the fault proxy: every request retried with backoff
and counted, a request that keeps failing surfaces as an `OSError` naming the path (the runner has Ray retry
those), never as a `TypeError` from an error object returned in place of bytes (fsspec's `cat_ranges`)."""

from __future__ import annotations

import os

import pytest

from bench.s3_store import BUCKET
from pipeline.work import store as work_store
from pipeline.work.store import Store

DATA = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def store(object_store, monkeypatch) -> Store:
    for name, value in object_store.server.env(object_store.proxy.endpoint).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(work_store, "BACKOFF_S", 0.001)
    store = Store.at(f"s3://{BUCKET}/store-{os.urandom(4).hex()}")
    store.fs.invalidate_cache()
    object_store.proxy.faults()
    yield store
    object_store.proxy.faults()


def test_reads_and_writes_through_a_flaky_store_are_exact_and_their_retries_counted(store, object_store):
    store.write_bytes("a/tokens.bin", DATA)
    # Of the GETs 30% fail: some retries in every run, while 8 failures of one request in a row (the retry budget)
    # stay at 0.3^8 = 7e-5. At 60% that was 1.7% per request, and a full run of the suite failed on it.
    object_store.proxy.faults(slowdown=0.15, reset=0.15)
    work_store.take_retries()
    starts = [0, 10, 5000, 300_000, 700_000, 1_000_000]
    ends = [10, 4000, 9000, 310_000, 900_000, len(DATA)]
    for _ in range(3):
        assert store.read_ranges("a/tokens.bin", starts, ends, max_gap=1000) == [
            DATA[s:e] for s, e in zip(starts, ends)
        ]
        assert store.read_bytes("a/tokens.bin") == DATA
        store.write_bytes("a/copy.bin", DATA[:1000])
    assert store.exists("a/copy.bin") and not store.exists("a/missing.bin")
    injected = sum(object_store.proxy.injected.values())
    assert 0 < work_store.take_retries() == injected  # here every request goes through the Store: all are counted
    object_store.proxy.faults()
    record = {"documents": 1}
    store.mark_done("task", record)
    assert record["retries"] == work_store.retries_so_far()


def test_a_store_that_keeps_failing_raises_an_oserror_naming_the_path(store, object_store):
    store.write_bytes("a/tokens.bin", DATA)
    object_store.proxy.faults(slowdown=1.0)
    for read in (
        lambda: store.read_ranges("a/tokens.bin", [0, 100], [10, 200]),
        lambda: store.read_bytes("a/tokens.bin"),
        lambda: store.write_bytes("a/out.bin", b"x"),
    ):
        with pytest.raises(
            OSError,
            match=f"failed {work_store.ATTEMPTS} times, last: "
            ".*(SlowDown|reduce your request rate|Service Unavailable)",
        ) as failed:
            read()
        assert failed.value.filename.startswith(f"s3://{BUCKET}/store-")


def test_a_missing_object_is_not_retried(store, object_store):
    work_store.take_retries()
    assert store.done("never-ran") is None
    with pytest.raises(FileNotFoundError):
        store.read_range("nothing.bin", 0, 10)
    assert work_store.take_retries() == 0 and object_store.proxy.requests < work_store.ATTEMPTS  # tried once each


def test_done_records_come_back_in_task_order_each_read_as_found_on_s3_and_on_disk(store, object_store, tmp_path):
    """`Store.done_records` (the runner's look-up of a stage's finished tasks): readers over runs of folders on an
    object store, one after another on a local disk; the same answer from both, through a flaky store."""
    folders = [f"process/{i:04d}" for i in range(300)]  # runs of 3 for 32 readers: several runs each
    local = Store.at(str(tmp_path / "work"))
    for i, folder in enumerate(folders):
        if i % 7:  # every 7th task has not finished
            for where in (store, local):
                where.mark_done(folder, {"documents": i, "funnels": {"x": "y" * 100}})
    expected = [None if i % 7 == 0 else (folder, i) for i, folder in enumerate(folders)]
    object_store.proxy.faults(slowdown=0.1)
    for where in (store, local):
        assert where.done_records(folders, lambda folder, record: (folder, record["documents"])) == expected

    def refuse(folder, record):
        raise KeyError(folder)

    with pytest.raises(KeyError, match="process/0001"):  # what the reader raises reaches the caller
        store.done_records(folders[:2], refuse)
