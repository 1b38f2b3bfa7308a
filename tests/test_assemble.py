"""The shard writer merges sorted pieces in row groups: the same Parquet bytes as sorting the whole
shard at once (and the same Arrow batches)."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flanmix import assemble, storage
from flanmix.mixture import SCHEMA


def _pieces(sizes: list[int], *, sort: bool, seed: int = 0) -> list[pa.Table]:
    rng = random.Random(seed)
    pieces = []
    for size in sizes:
        ids = [format(rng.getrandbits(64), "016x") for _ in range(size)]
        if sort:
            ids.sort()
        cols = {}
        for field in SCHEMA:
            if field.name == "example_id":
                cols[field.name] = ids
            elif pa.types.is_string(field.type):
                cols[field.name] = ["x" * rng.randrange(0, 40) + i for i in ids]
            elif pa.types.is_list(field.type):
                cols[field.name] = [None if rng.random() < 0.3 else ["a", i[:3]] for i in ids]
            elif pa.types.is_boolean(field.type):
                cols[field.name] = [rng.random() < 0.5 for _ in ids]
            else:
                cols[field.name] = [rng.randrange(0, 9) for _ in ids]
        pieces.append(pa.Table.from_pydict(cols, schema=SCHEMA))
    return pieces


def _whole_shard(pieces: list[pa.Table], path, file_format: str) -> None:
    """The writer before merging: gather the shard, sort it whole, write it at once."""
    table = pa.concat_tables(pieces) if pieces else SCHEMA.empty_table()
    if table.num_rows:
        table = table.take(pc.sort_indices(table, sort_keys=[("example_id", "ascending")]))
    table = table.combine_chunks()
    if file_format == "parquet":
        pq.write_table(
            table,
            path,
            row_group_size=assemble.ROW_GROUP,
            compression="zstd",
            use_dictionary=[n for n in SCHEMA.names if n not in assemble.PLAIN_COLUMNS],
            write_statistics=True,
            store_schema=True,
        )
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as w:
            for batch in table.to_batches(max_chunksize=assemble.ROW_GROUP):
                w.write_batch(batch)


@pytest.mark.parametrize("file_format", ["parquet", "arrow"])
@pytest.mark.parametrize(
    "sizes, sort",
    [
        ([50, 31, 7, 64], True),  # sorted runs, several row groups, a short last one
        ([50, 31, 7, 64], False),  # unsorted pieces still come out in order
        ([13], True),  # one piece
        ([21, 21], True),  # exactly three row groups
        ([], True),  # an empty shard
    ],
)
def test_merge_writes_the_same_bytes_as_a_whole_sort(
    tmp_path, monkeypatch, sizes, sort, file_format
):
    monkeypatch.setattr(assemble, "ROW_GROUP", 14)
    pieces = _pieces(sizes, sort=sort)
    old, new = tmp_path / "old", tmp_path / "new"
    _whole_shard(pieces, old, file_format)
    rows = assemble.write_shard(assemble.merged(pieces), str(new), file_format)
    assert rows == sum(sizes)
    if file_format == "parquet":
        assert new.read_bytes() == old.read_bytes()
    else:  # the same batches; only the padding differs (a sliced buffer wrote its neighbours)
        read = [list(pa.ipc.open_stream(pa.OSFile(str(f)))) for f in (old, new)]
        assert [b.num_rows for b in read[0]] == [b.num_rows for b in read[1]]
        assert pa.Table.from_batches(read[1], SCHEMA).equals(pa.Table.from_batches(read[0], SCHEMA))
    if file_format == "parquet" and rows:
        meta = pq.ParquetFile(new).metadata
        assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)][:-1] == [14] * (
            meta.num_row_groups - 1
        )


def test_merge_keeps_piece_order_on_equal_ids():
    pieces = _pieces([5, 5], sort=True)
    same = pieces[0].column("example_id")
    pieces[1] = pieces[1].set_column(
        SCHEMA.get_field_index("example_id"), SCHEMA.field("example_id"), same
    )
    out = pa.concat_tables(list(assemble.merged(pieces, rows=3)))
    expect = pa.concat_tables(pieces)
    expect = expect.take(pc.sort_indices(expect, sort_keys=[("example_id", "ascending")]))
    assert out.equals(expect)


def test_row_groups_are_capped_by_text_bytes(tmp_path):
    pieces = _pieces([40, 25], sort=True)
    text = sum(int(n) for t in pieces for n in assemble._row_bytes(t))
    batches = list(assemble.merged(pieces, rows=30, max_bytes=text // 6))
    assert sum(b.num_rows for b in batches) == 65 and len(batches) >= 6
    for b in batches:  # at most max_bytes of text, unless a single row is longer
        assert b.num_rows == 1 or assemble._row_bytes(b).sum() <= text // 6
    assert pa.concat_tables(batches).equals(pa.concat_tables(list(assemble.merged(pieces))))
    rows = assemble.write_shard(iter(batches), str(tmp_path / "s.parquet"), "parquet")
    meta = pq.ParquetFile(tmp_path / "s.parquet").metadata
    assert rows == 65 and meta.num_row_groups == len(batches)


def test_shard_count_by_rows_and_bytes():
    assert assemble.shard_count(0, 0, 100, 1000) == 0
    assert assemble.shard_count(1, 0, 100, 1000) == 1
    assert assemble.shard_count(250, 10, 100, 1000) == 3  # by rows
    assert assemble.shard_count(250, 10_001, 100, 1000) == 11  # by bytes


@pytest.mark.parametrize(
    "n, mapped, small", [(1, 9, 0), (3, 9, 0), (7, 9, 0), (3, 1, 0), (3, 9, 1)]
)
def test_shards_take_equal_id_ranges_cut_from_sorted_runs(tmp_path, monkeypatch, n, mapped, small):
    """Runs written in small batches; every shard reads the batches its range touches, cuts them
    exactly, and the shards in order are the whole sorted set of rows: merged from the maps, with
    runs read into memory past the open-files budget, or with small slices copied."""
    monkeypatch.setattr(assemble, "RUN_BATCH", 4)
    monkeypatch.setattr(assemble, "_open_files_budget", lambda want: mapped)
    monkeypatch.setattr(assemble, "SMALL_SLICE", small << 20)
    ranges = assemble.shard_ranges(n)
    assert ranges[0][0] == "0" * 16 and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # contiguous
    tables = _pieces([30, 0, 17, 1, 9], sort=True, seed=n)
    runs = []
    for uid, t in enumerate(tables):
        path = assemble.run_path(str(tmp_path / "runs"), "train", uid)
        ids = t.column("example_id").to_pylist()
        if ids:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as w:
                w.write_table(t, max_chunksize=assemble.RUN_BATCH)
        firsts = tuple(ids[:: assemble.RUN_BATCH])
        runs.append(assemble.Run(uid, "train", len(ids), 0, firsts, ids[-1] if ids else ""))
    out = []
    for s, (lo, hi) in enumerate(ranges):
        slices = assemble.run_slices(runs, lo, hi)
        dirs = (str(tmp_path / "runs"), None)
        args = ("train", s, n, dirs, slices, lo, hi, str(tmp_path), "arrow")
        entry = assemble.write_shard_job(None, args)
        with pa.OSFile(str(tmp_path / entry["file"])) as f:
            shard = pa.ipc.open_stream(f).read_all()
        ids = shard.column("example_id").to_pylist()
        assert all(lo <= i and (hi is None or i < hi) for i in ids) and entry["rows"] == len(ids)
        out.append(shard)
    whole = pa.concat_tables(tables)
    whole = whole.take(pc.sort_indices(whole, sort_keys=[("example_id", "ascending")]))
    assert pa.concat_tables(out).equals(whole)


def test_a_unit_given_as_columns_is_sorted_like_a_table():
    (table,) = _pieces([50], sort=False)
    cols = table.to_pydict()
    got = assemble._as_sorted_table(cols)
    assert got.equals(table.take(pc.sort_indices(table.column("example_id"))))
    assert assemble._as_sorted_table(table).equals(got)


def test_compile_sizes_shards_by_text_bytes(tmp_path):
    """Long text makes more shards than the rows alone would; the shards in order hold the ids in
    order, each within its range; ``output.shards`` still fixes the train count."""
    import math

    from flanmix.catalog import load_catalog
    from flanmix.compile import compile_mixture
    from flanmix.errors import CompileError
    from flanmix.mixture import Mixture
    from tests.test_mix import FIXTURE, make_spec, write_sources

    catalog = load_catalog(FIXTURE)
    sources = write_sources(tmp_path / "src", n=600, n_eval=30)
    kw = dict(catalog=catalog, workers=1, base_dir=tmp_path, offline=True)
    spec = make_spec(cap=600, total_rows=None, sources=sources, output={"shard_bytes": 20_000})
    manifest = compile_mixture(spec, tmp_path / "out", **kw)
    mix = Mixture.open(tmp_path / "out")
    assert mix.verify() == []
    rows = list(mix.iter_rows("train"))
    text = sum(len(r["inputs"].encode()) + len(r["targets"].encode()) for r in rows)
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) == math.ceil(text / 20_000) > 1  # 100,000 rows per shard by default
    ids = [r["example_id"] for r in rows]
    assert ids == sorted(ids)
    at = 0
    for (lo, hi), shard in zip(assemble.shard_ranges(len(shards)), shards, strict=True):
        mine = ids[at : at + shard["rows"]]
        assert all(lo <= i and (hi is None or i < hi) for i in mine)
        at += shard["rows"]
    forced = spec.model_copy(update={"output": spec.output.model_copy(update={"shards": 2})})
    again = compile_mixture(forced, tmp_path / "two", **kw)
    assert len(again["splits"]["train"]["shards"]) == 2
    tiny = spec.model_copy(update={"output": spec.output.model_copy(update={"shard_bytes": 1})})
    with pytest.raises(CompileError, match=r"train shards for [\d,]+ rows; the limit is 10,000"):
        compile_mixture(tiny, tmp_path / "tiny", **kw)  # counted after rendering
    assert not (tmp_path / "tiny").exists()


def test_units_hold_about_the_same_text_whatever_the_row_shape():
    from flanmix.plan import UNIT_ROWS, TaskPlan, unit_draws
    from tests.test_mix import make_spec

    def plan(role, templates, shots=None):
        return TaskPlan("t", "c", role, None, ["a"] * templates, None, 0, shots=shots)

    zero = make_spec(formats={"few_shot": 0.0})
    assert unit_draws(zero, plan("train", 5)) == UNIT_ROWS
    few = make_spec(formats={"few_shot": 1.0, "k": 4})
    assert unit_draws(few, plan("train", 5)) == UNIT_ROWS // 5  # each row ~5 rows of text
    every = make_spec(formats={"few_shot": 0.5, "k": 2}, templates={"mode": "all"})
    assert unit_draws(every, plan("train", 5)) == UNIT_ROWS // 10  # 5 rows per draw, 2x text
    evals = make_spec(eval={"few_shot": 2})
    assert unit_draws(evals, plan("eval", 4, shots=object())) == round(UNIT_ROWS / 12)
    assert unit_draws(evals, plan("eval", 4)) == UNIT_ROWS // 4  # no exemplars: zero-shot


def test_long_source_rows_make_smaller_units(tmp_path):
    """Units shrink with the source's mean row bytes above UNIT_ROW_BYTES (read from the Parquet
    footer when the handle is made), and stay whole below it."""
    from types import SimpleNamespace

    from flanmix.errors import Location
    from flanmix.plan import UNIT_ROW_BYTES, UNIT_ROWS, TaskPlan, unit_draws
    from flanmix.sources import SourceHandle, _open_files
    from tests.test_mix import make_spec

    spec = make_spec(formats={"few_shot": 0.0})
    for words, expect in ((10, UNIT_ROWS), (2000, None)):
        path = tmp_path / f"rows{words}.parquet"
        pq.write_table(
            pa.table({"text": [f"{i} " + "word " * words for i in range(200)], "label": [0] * 200}),
            path,
        )
        handle = _open_files(SimpleNamespace(id="t"), "train", "parquet", [path], Location())
        assert handle.row_bytes > words * 5
        tp = TaskPlan("t", "c", "train", handle, ["a"], None, 0)
        got = unit_draws(spec, tp)
        if expect is not None:
            assert got == expect
        else:
            assert got == round(UNIT_ROWS * UNIT_ROW_BYTES / handle.row_bytes) < UNIT_ROWS / 9
    jsonl = tmp_path / "rows.jsonl"  # loaded by datasets: sized from its Arrow table
    jsonl.write_text(
        "".join(f'{{"text": "{i} {"word " * 2000}", "label": 0}}\n' for i in range(50))
    )
    handle = _open_files(SimpleNamespace(id="t"), "train", "json", [jsonl], Location())
    assert handle.kind == "arrow" and handle.row_bytes > 10_000
    assert unit_draws(spec, TaskPlan("t", "c", "train", handle, ["a"], None, 0)) < UNIT_ROWS / 9
    unknown = SourceHandle("t", "train", "niv2", "niv2", 10)  # no size known: whole units
    assert unit_draws(spec, TaskPlan("t", "c", "train", unknown, ["a"], None, 0)) == UNIT_ROWS


def test_parquet_shards_keep_dictionaries_for_repeated_columns_only(tmp_path):
    path = tmp_path / "shard.parquet"
    assemble.write_shard(assemble.merged(_pieces([30, 20], sort=True)), str(path), "parquet")
    meta = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {
        meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)
    }
    for name in assemble.PLAIN_COLUMNS:
        assert not any("DICTIONARY" in e for e in encodings[name]), name
    assert any("DICTIONARY" in e for e in encodings["task"])
    assert any("DICTIONARY" in e for e in encodings["targets"])


_HEAP = """
import os, sys
from flanmix import assemble
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
if sys.argv[1] == 'keep':
    assemble.keep_freed_heap()
before = rss()
strings = [bytes(20_000) for _ in range(3_000)]  # a unit's worth of rendered text
grown = rss()
del strings
print((grown - before) >> 20, (grown - rss()) >> 20)
"""


@pytest.mark.skipif(assemble._libc() is None, reason="glibc only")
def test_a_worker_keeps_its_freed_heap_for_the_next_unit():
    import subprocess
    import sys

    def run(mode):
        out = subprocess.run([sys.executable, "-c", _HEAP, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return [int(x) for x in out.stdout.split()]

    grown, returned = run("default")
    assert grown >= 40 and returned >= 40  # glibc gives the freed top back at once
    grown, returned = run("keep")
    assert grown >= 40 and returned < 8  # kept for the next unit (trimmed above TRIM_ABOVE)


# A script's process set up by init_worker as a worker of flanmix's own (argument "worker") or as
# a caller's ("caller"): the process settings come first, then it fails without a plan.
_SET_UP = """
import sys
from flanmix import assemble, executor
if sys.argv[1] == "worker":
    executor._OWN_WORKER = True  # as a pool worker's start or a Ray actor sets it
try:
    assemble.init_worker(None)
except Exception:  # no context: the renderer fails after the process settings
    pass
"""

_TUNED = (
    """
import ctypes
from flanmix import assemble
libc = ctypes.CDLL("libc.so.6")
before = libc.prctl(assemble.PR_GET_THP_DISABLE, 0, 0, 0, 0)
"""
    + _SET_UP
    + """
print(before, libc.prctl(assemble.PR_GET_THP_DISABLE, 0, 0, 0, 0))
"""
)


@pytest.mark.skipif(
    assemble._libc() is None or not sys.platform.startswith("linux"), reason="Linux and glibc"
)
def test_a_flanmix_worker_uses_small_pages_and_a_callers_process_is_left_alone():
    import subprocess

    def run(mode):
        out = subprocess.run([sys.executable, "-c", _TUNED, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return [int(x) for x in out.stdout.split()]

    assert run("worker") == [0, 1]  # no transparent huge pages in a worker of its own
    assert run("caller") == [0, 0]  # the settings of a process flanmix did not start: untouched


_PANDAS = (
    _SET_UP
    + """
import pyarrow as pa
table = pa.Table.from_pydict({"s": pa.array(["a", None]), "n": pa.array([1, 2], pa.int64())})
assert table.to_pylist() == [{"s": "a", "n": 1}, {"s": None, "n": 2}]
pa.array([float("nan"), None])
print("pandas" in sys.modules)
try:
    import pandas
    print("imported")
except ModuleNotFoundError as exc:
    print(exc)
"""
)


def test_a_flanmix_worker_converts_without_importing_pandas_and_a_caller_keeps_it():
    import subprocess

    pytest.importorskip("pandas")

    def run(mode):
        out = subprocess.run([sys.executable, "-c", _PANDAS, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    assert run("worker") == ["False", "pandas is not imported in flanmix's compile workers"]
    assert run("caller") == ["True", "imported"]  # pyarrow imports it where flanmix did not start


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for two workers")
def test_spawned_compile_workers_never_import_pandas(tmp_path, monkeypatch):
    """Fresh (spawned) pool workers set up as a compile's convert rows without importing pandas,
    and a compile on two of them gives the shards of one worker."""
    from flanmix.catalog import load_catalog
    from flanmix.compile import compile_mixture
    from flanmix.executor import LocalExecutor
    from tests.test_mix import FIXTURE, make_spec, write_sources

    pytest.importorskip("pandas")
    monkeypatch.setenv("FLANMIX_START_METHOD", "spawn")
    with LocalExecutor(workers=2) as ex, ex.start(_compile_setup, None, max_jobs=2) as w:
        assert w.count == 2
        assert list(w.map(_has_pandas, range(2))) == [(True, False), (True, False)]
    sources = write_sources(tmp_path / "src", n=600, n_eval=30)
    spec = make_spec(cap=600, total_rows=None, sources=sources, output={"shard_bytes": 20_000})
    kw = dict(catalog=load_catalog(FIXTURE), base_dir=tmp_path, offline=True)
    lines: list[str] = []
    two = compile_mixture(spec, tmp_path / "two", workers=2, log=lines.append, **kw)
    assert any(line.endswith("with 2 worker(s)") for line in lines)
    one = compile_mixture(spec, tmp_path / "one", workers=1, **kw)
    assert two["splits"] == one["splits"]  # the same shards (sha256s)


def _compile_setup(context):
    """A compile worker's setup (:func:`flanmix.assemble.init_worker`), without a plan: it fails
    after the process settings."""
    with contextlib.suppress(Exception):
        assemble.init_worker(context)


def _has_pandas(_state, _job):
    pa.array(["a conversion, where pyarrow would import pandas"])
    return assemble._NoPandas in sys.meta_path, "pandas" in sys.modules


@pytest.mark.parametrize("workers", [1, 2])
def test_a_local_scratch_folder_gives_the_same_shards_and_is_left_empty(tmp_path, workers):
    from flanmix.catalog import load_catalog
    from flanmix.compile import compile_mixture
    from tests.test_mix import FIXTURE, make_spec, write_sources

    catalog = load_catalog(FIXTURE)
    sources = write_sources(tmp_path / "src", n=600, n_eval=30)
    kw = dict(catalog=catalog, workers=workers, base_dir=tmp_path, offline=True)
    spec = make_spec(cap=600, total_rows=None, sources=sources, output={"shard_bytes": 20_000})
    plain = compile_mixture(spec, tmp_path / "plain", **kw)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "theirs.txt").write_text("a file of the user's")
    on_scratch = compile_mixture(spec, tmp_path / "out", scratch=str(scratch), **kw)
    assert on_scratch["splits"] == plain["splits"]  # several shards, the same sha256s
    assert len(plain["splits"]["train"]["shards"]) > 1
    assert [p.name for p in scratch.iterdir()] == ["theirs.txt"]


def _compile_small(tmp_path, name, workers=1):
    from flanmix.catalog import load_catalog
    from flanmix.compile import compile_mixture
    from tests.test_mix import FIXTURE, make_spec, write_sources

    sources = write_sources(tmp_path / f"src_{name}", n=600, n_eval=30)
    spec = make_spec(cap=600, total_rows=None, sources=sources, output={"shard_bytes": 20_000})
    kw = dict(catalog=load_catalog(FIXTURE), workers=workers, base_dir=tmp_path, offline=True)
    return compile_mixture(spec, tmp_path / name, **kw)


@pytest.mark.parametrize("workers", [1, 2])
def test_runs_held_in_memory_where_there_is_room_give_the_same_shards(
    tmp_path, monkeypatch, workers
):
    """Runs go to the memory-backed folder while spare_memory says so, else to disk, run by run;
    the shards are the same bytes whichever way, and the folder is gone after the compile."""
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(assemble, "FAST_ROOT", str(shm))
    monkeypatch.setattr(assemble, "spare_memory", lambda nbytes, root=None: False)
    on_disk = _compile_small(tmp_path, "disk", workers)
    seen = []

    def every_other(nbytes, root=None):  # some runs in memory, some on disk
        seen.append(nbytes)
        return len(seen) % 2 == 1

    monkeypatch.setattr(assemble, "spare_memory", every_other)
    mixed = _compile_small(tmp_path, "mixed", workers)
    monkeypatch.setattr(assemble, "spare_memory", lambda nbytes, root=None: True)
    in_memory = _compile_small(tmp_path, "memory", workers)
    assert mixed["splits"] == on_disk["splits"] == in_memory["splits"]
    assert len(on_disk["splits"]["train"]["shards"]) > 1
    if workers == 1:  # forked workers count in their own copies
        assert len(seen) > 2
    assert list(shm.iterdir()) == []  # removed by each compile


def test_memory_backed_runs_of_dead_compiles_are_removed_and_nothing_else(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(assemble, "FAST_ROOT", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{assemble.FAST_PREFIX}{dead.pid}-1"
    live = tmp_path / f"{assemble.FAST_PREFIX}{os.getppid()}-2"
    theirs = tmp_path / "flanmix-something-else"
    for folder in (stale, live, theirs):
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "0000001.arrow").write_bytes(b"x")
    assert assemble.clean_fast_runs() == [str(stale)]
    assert not stale.exists() and live.exists() and theirs.exists()
    made = assemble.fast_runs_dir("tag")
    if made is not None:  # this machine has the memory to spare
        assert made == str(tmp_path / f"{assemble.FAST_PREFIX}{os.getpid()}-tag")
        assert oct(Path(made).stat().st_mode & 0o777) == "0o700"


def test_spare_memory_keeps_a_share_of_the_machine_free():
    info = storage.meminfo()
    if not info:
        pytest.skip("no /proc/meminfo")
    keep = max(storage.SPARE_MIN, int(storage.SPARE_SHARE * info["MemTotal"]))
    assert not storage.spare_memory(info["MemAvailable"] - keep + (1 << 30))
    assert not storage.spare_memory(0, root="/no/such/folder")


def test_a_run_that_cannot_be_written_in_memory_goes_to_disk(tmp_path, monkeypatch):
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(assemble, "FAST_ROOT", str(shm))
    monkeypatch.setattr(assemble, "spare_memory", lambda nbytes, root=None: True)
    in_memory = _compile_small(tmp_path, "memory")
    write = assemble._write_run
    failed = []

    def full(table, path):  # the tmpfs fills up while the run is written
        if path.startswith(str(shm)):
            write(table.slice(0, 1), path)  # a partial file is left behind
            failed.append(path)
            raise OSError(28, "No space left on device")
        write(table, path)

    monkeypatch.setattr(assemble, "_write_run", full)
    fallen = _compile_small(tmp_path, "fallen")
    assert failed and fallen["splits"] == in_memory["splits"]
    assert list(shm.iterdir()) == []
