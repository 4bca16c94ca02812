import io

import numpy as np
import pytest

from pipeline.build import finalize
from pipeline.work.store import Store


@pytest.mark.parametrize("url", ["local", "memory://cluster-sizes"])
def test_the_cluster_size_histogram_is_read_in_pieces_and_equals_the_whole_vectors(tmp_path, monkeypatch, url):
    """One entry a cluster: at a crawl snapshot a vector of GBs, which the driver must not hold whole."""
    work = Store.at(str(tmp_path) if url == "local" else url)
    sizes = np.random.default_rng(0).zipf(1.6, 10_001).astype(np.int64)
    for name, vector in {"some": sizes, "none": sizes[:0]}.items():
        buffer = io.BytesIO()
        np.save(buffer, vector)
        work.write_bytes(f"resolve/{name}.npy", buffer.getvalue())
        values, counts = np.unique(vector, return_counts=True)
        whole = {str(int(v)): int(c) for v, c in zip(values, counts)}
        monkeypatch.setattr(finalize, "SIZES_PIECE", 999)  # 11 pieces, the last one short
        assert finalize._cluster_size_histogram(work, f"resolve/{name}.npy") == whole
        assert list(finalize._cluster_size_histogram(work, f"resolve/{name}.npy")) == list(whole)  # in size order
