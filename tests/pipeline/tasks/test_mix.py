import tempfile

import numpy as np

from pipeline.tasks import mix as mix_tasks
from pipeline.work.store import Store


class _Counting(Store):
    reads = 0  # ranges requested
    batches = 0  # requests made together (concurrent on an object store)

    def read_range(self, rel, start, end):
        type(self).reads += 1
        type(self).batches += 1
        return super().read_range(rel, start, end)

    def read_batch(self, rel, starts, ends):
        type(self).reads += len(starts)
        type(self).batches += 1
        type(self).batches -= len(starts) < 2  # read_range counts a lone range
        type(self).reads -= len(starts) < 2
        return super().read_batch(rel, starts, ends)


def test_an_object_store_file_gives_exactly_its_documents_tokens_and_only_their_runs():
    work = _Counting.at("memory://mix-runs")
    tokens = np.arange(3_000_000, dtype=np.uint16)
    work.write_bytes("f/tokens.bin", tokens.tobytes())
    # a contiguous block (one run), a repeated document (upsample), and scattered documents far apart
    starts = np.array([10, 20, 30, 10, 2_000_000, 1_000_000, 2_900_000], np.int64)
    lengths = np.array([10, 10, 5, 10, 7, 3, 100], np.int64)
    with tempfile.NamedTemporaryFile() as scratch:
        scratch.write(b"\0" * 6)  # what an earlier file of the group appended
        path, local = mix_tasks._open_runs(work, "f", np.dtype("<u2"), starts, lengths, scratch)
        scratch.flush()
        got = np.memmap(path, dtype="<u2", mode="r")
        for s, n, at in zip(starts, lengths, local):
            assert np.array_equal(got[at : at + n], tokens[s : s + n])
        assert len(got) < 200  # the runs, not the span from the first to the last document
    assert _Counting.reads == 4 and _Counting.batches == 1  # the 4 runs requested together
