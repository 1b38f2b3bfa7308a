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


def _one_group_source(path, n=600):
    """``n`` rows written with pyarrow's defaults: one row group (as pandas and pyarrow write a
    file of up to a million rows)."""
    pq.write_table(pa.table({"text": [f"row {i} " * 30 for i in range(n)]}), path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1


def test_a_big_row_group_is_decoded_once_and_leaves_no_file(tmp_path, monkeypatch):
    import numpy as np

    from flanmix import sources, storage
    from flanmix.sources import SourceHandle, SourceReader

    path = tmp_path / "train.parquet"
    _one_group_source(path)
    handle = SourceHandle("t", "train", "parquet", "local", 600, files=[str(path)])
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    monkeypatch.setattr(storage, "FAST_ROOT", str(spill_dir))
    monkeypatch.setattr(storage, "spare_memory", lambda nbytes, root=None: True)
    monkeypatch.setattr(SourceReader, "KEEP_BYTES", 1024)  # the group is "big"
    monkeypatch.setattr(sources, "SPILL_BATCH_BYTES", 4096)  # several batches
    decoded = []
    original = sources._spill_group
    monkeypatch.setattr(sources, "_spill_group", lambda pf, g: decoded.append(g) or original(pf, g))
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", None)  # never decoded whole
    reader = SourceReader(handle)
    for start in range(0, 600, 70):  # a pass in units that each need part of the group
        idx = np.arange(start, min(start + 70, 600))
        assert [r["text"] for r in reader.read(idx)] == [f"row {i} " * 30 for i in idx]
    got = reader.read(np.array([3, 599]))  # scattered rows: from the same copy
    assert [r["text"] for r in got] == ["row 3 " * 30, "row 599 " * 30]
    assert decoded == [0]
    assert reader.spills.groups() == [0]
    assert list(spill_dir.iterdir()) == []  # an unnamed file: nothing to clean up, ever
    assert reader._kept == {}


def test_spilled_row_groups_are_shared_and_dropped_beyond_spill_bytes(tmp_path, monkeypatch):
    import numpy as np

    from flanmix import sources
    from flanmix.sources import SourceHandle, SourceReader, SpillCache

    path = tmp_path / "train.parquet"
    table = pa.table({"text": [f"row {i} " * 30 for i in range(600)]})
    pq.write_table(table, path, row_group_size=200)
    handle = SourceHandle("t", "train", "parquet", "local", 600, files=[str(path)])
    monkeypatch.setattr(SourceReader, "KEEP_BYTES", 1024)
    decoded = []
    original = sources._spill_group
    monkeypatch.setattr(sources, "_spill_group", lambda pf, g: decoded.append(g) or original(pf, g))
    spills = SpillCache()
    reader = SourceReader(handle, spills)
    reader.read(np.array([0, 250]))  # groups 0 and 1
    assert spills.groups() == [0, 1]
    monkeypatch.setattr(sources, "SPILL_BYTES", int(1.5 * spills.nbytes / 2))
    other = SourceReader(handle, spills)  # another reader of the same cache (a worker's readers)
    got = other.read(np.array([450, 599]))  # group 2: the oldest copies go
    assert [r["text"] for r in got] == [f"row {i} " * 30 for i in (450, 599)]
    assert spills.groups() == [2]
    assert [r["text"] for r in reader.read(np.array([460]))] == ["row 460 " * 30]  # shared
    assert spills.groups() == [2] and decoded == [0, 1, 2]


def test_a_spilled_dictionary_column_keeps_its_values(tmp_path, monkeypatch):
    """A column pyarrow reads back as a dictionary (a pandas categorical, say) may get a new
    dictionary in every batch: the spilled copy still reads every value."""
    import numpy as np

    from flanmix import sources
    from flanmix.sources import SourceHandle, SourceReader

    path = tmp_path / "train.parquet"
    labels = [
        ["cat", "dog", "emu"][i % 3] if i < 300 else ["fox", "gnu"][i % 2] for i in range(600)
    ]
    table = pa.table({"label": pa.array(labels).dictionary_encode(), "i": list(range(600))})
    pq.write_table(table, path)
    assert pa.types.is_dictionary(pq.ParquetFile(path).schema_arrow.field("label").type)
    handle = SourceHandle("t", "train", "parquet", "local", 600, files=[str(path)])
    monkeypatch.setattr(SourceReader, "KEEP_BYTES", 64)
    monkeypatch.setattr(sources, "SPILL_BATCH_BYTES", 256)
    got = SourceReader(handle).read(np.arange(600))
    assert [r["label"] for r in got] == labels and [r["i"] for r in got] == list(range(600))


def test_a_compile_writes_the_same_shards_from_one_big_row_group(tmp_path, monkeypatch):
    """The same rows in one row group (read through a spilled copy) or in small ones (read
    directly): the same shards."""
    from flanmix import sources
    from flanmix.sources import SourceReader

    spilled = []
    original = sources._spill_group
    monkeypatch.setattr(sources, "_spill_group", lambda pf, g: spilled.append(g) or original(pf, g))
    monkeypatch.setattr(SourceReader, "KEEP_BYTES", 8192)
    lib = tmp_path / "lib"
    shutil.copytree(FIXTURE, lib)
    catalog = load_catalog(lib)
    table = pa.table(
        {"text": [f"review {i}: {'great' if i % 2 else 'dull'}." for i in range(3000)],
         "label": [i % 2 for i in range(3000)]}
    )  # fmt: skip
    hashes = []
    for name, group_rows in (("one", None), ("small", 64)):
        folder = tmp_path / name
        folder.mkdir()
        pq.write_table(table, folder / "train.parquet", row_group_size=group_rows)
        spec = make_spec(
            clusters=[], tasks=["senti"], holdout={}, cap=5000, total_rows=None,
            sources={"senti": str(folder)}, formats={"few_shot": 0.5, "k": 2},
        )  # fmt: skip
        out = tmp_path / f"out_{name}"
        manifest = compile_mixture(spec, out, catalog=catalog, workers=1, base_dir=tmp_path)
        hashes.append({s["file"]: s["sha256"] for s in manifest["splits"]["train"]["shards"]})
        assert manifest["splits"]["train"]["rows"] == 3000
        assert spilled == ([0] if name == "one" else []), spilled  # the big group, once
        spilled.clear()
    assert hashes[0] == hashes[1]
