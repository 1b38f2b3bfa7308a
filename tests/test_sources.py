"""Sources: the real `datasets.load_dataset` hub code path, on a dataset repository we make."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from flanmix.catalog import load_catalog
from flanmix.compile import compile_mixture
from flanmix.mixture import Mixture

from .test_mix import FIXTURE, make_spec


def _hub_repo(root, n_train=400, n_test=60):
    """A folder laid out like a hub dataset repository: data/<split>-00000-of-00001.parquet."""
    data = root / "data"
    data.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        table = pa.table(
            {"text": [f"{split} review {i}: {'great' if i % 2 else 'dull'}." for i in range(n)],
             "label": [i % 2 for i in range(n)]}
        )  # fmt: skip
        pq.write_table(table, data / f"{split}-00000-of-00001.parquet")
    return root


def test_hub_source_goes_through_load_dataset(tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(FIXTURE, lib)
    repo = _hub_repo(tmp_path / "repo")
    task_file = lib / "task_templates" / "sentiment" / "senti.yaml"
    data = yaml.safe_load(task_file.read_text())
    data["source"]["hf"] = {"path": str(repo)}  # load_dataset(path) resolves it like a hub repo
    task_file.write_text(yaml.safe_dump(data, sort_keys=False))
    catalog = load_catalog(lib)

    spec = make_spec(clusters=[], tasks=["senti"], holdout={}, cap=1000, total_rows=None)
    manifest = compile_mixture(
        spec, tmp_path / "out", catalog=catalog, workers=1, offline=False, base_dir=tmp_path
    )
    source = manifest["tasks"]["train:senti"]["source"]
    assert source.startswith(f"hub:{repo}@train"), source
    assert manifest["uses_samples"] is False
    columns = ["inputs", "targets", "source_index"]
    rows = list(Mixture.open(tmp_path / "out").iter_rows("train", columns))
    assert len(rows) == 400
    # every row was rendered from the repository's own row (in the input, or the target of a
    # turned-around "write a review" template)
    bad = [
        r for r in rows if f"train review {r['source_index']}:" not in r["inputs"] + r["targets"]
    ]
    assert bad == [], bad[:3]


def test_a_reader_reads_each_row_group_once_while_it_is_kept(tmp_path, monkeypatch):
    import numpy as np

    from flanmix.sources import SourceHandle, SourceReader

    path = tmp_path / "train.parquet"
    pq.write_table(
        pa.table({"text": [f"row {i} " * 20 for i in range(1000)]}), path, row_group_size=100
    )
    handle = SourceHandle("t", "train", "parquet", "local", 1000, files=[str(path)])
    reads = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_group",
        lambda self, i, **kw: reads.append(i) or original(self, i, **kw),
    )
    reader = SourceReader(handle)
    # a pass over the source in units of 150 rows: units cross the ends of row groups
    for start in range(0, 1000, 150):
        idx = np.arange(start, min(start + 150, 1000))
        assert [r["text"] for r in reader.read(idx)] == [f"row {i} " * 20 for i in idx]
    assert reads == list(range(10))  # every group once, though most units need two
    # a reader holds the groups of its last read only (they may be asked for again), within
    # KEEP_BYTES, and a read beyond that keeps nothing
    assert len(reader._kept) == 1  # the last unit's group
    group = reader._kept[(id(reader._files[0][0]), 9)].nbytes
    monkeypatch.setattr(SourceReader, "KEEP_BYTES", int(2.5 * group))
    reader = SourceReader(handle)
    reads.clear()
    for start in range(0, 1000, 150):
        reader.read(np.arange(start, min(start + 150, 1000)))
        assert len(reader._kept) <= 2
    assert reads == list(range(10))
    got = reader.read(np.array([5, 250, 999]))  # groups 0-9: more than KEEP_BYTES
    assert [r["text"] for r in got] == [f"row {i} " * 20 for i in (5, 250, 999)]
    assert reader._kept == {}
    reader.read(np.array([990]))
    assert reads == list(range(10)) + list(range(9)) + [9]  # 9 was kept for the big read, not after
