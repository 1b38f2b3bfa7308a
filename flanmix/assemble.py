"""Assembling shards: every unit's rows as one sorted run, then runs into ordered, hashed shards.

Both are job functions for an executor (:mod:`flanmix.executor`): every worker builds one
:class:`~flanmix.rows.UnitRenderer` from the :class:`~flanmix.rows.WorkerContext` (:func:`init_worker`),
then runs :func:`render_unit_job` per unit and :func:`write_shard_job` per shard.

A rendered unit is written as one *run*: its rows sorted by ``example_id`` (16 hex digits of a
64-bit hash, which order as the number does), in record batches of ``RUN_BATCH`` rows. Once every
unit is rendered the compile knows each split's rows and text bytes, and fixes the number of shards
(:func:`shard_count`); shard ``s`` of ``n`` takes the ids in ``[s * 2**64 / n, (s + 1) * 2**64 / n)``
(:func:`shard_ranges`; the ids are uniform hashes, so shards are even), which is a contiguous slice
of every run. The shard writer reads only the batches of each run that its range touches
(:func:`run_slices` picks them from the batches' first ids), cuts the slices by binary search
(small ones are copied, large ones stay memory-mapped) and merges them in id order, a row group
at a time. Nothing depends on the number of workers or the
executor. Runs and shards go through :mod:`flanmix.storage`, so on a cluster they can live on
shared storage (``executor.scratch``). On one machine, runs go to memory-backed storage
(``/dev/shm``) while the machine has memory to spare (:func:`fast_runs_dir`), else to the staging
folder.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import mmap
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import storage
from .mixture import SCHEMA, sha256_file, shard_name
from .rows import UnitRenderer, WorkerContext, sorted_table
from .storage import FAST_ROOT, spare_memory

ROW_GROUP = 10_000  # rows per row group of a shard, at most
ROW_GROUP_BYTES = 32 * 2**20  # text per row group, at most (long rows make smaller groups)
#: Columns of a Parquet shard written without a dictionary: their values are (nearly) all
#: distinct, so a dictionary only costs time until the writer gives up on it (a 100k-row shard of
#: short rows: 10-35% of its write time, and a larger file).
PLAIN_COLUMNS = ("inputs", "example_id", "source_index")
RUN_BATCH = 1_024  # rows per record batch of a run: what a shard reads of the runs it overlaps
ID_SPACE = 1 << 64
#: a shard writer copies the slices of runs up to this size into its memory (up to COPY_BUDGET
#: in all) instead of keeping their runs mapped; larger slices are read from the maps
SMALL_SLICE = 1 << 20
COPY_BUDGET = 128 << 20


@dataclass(frozen=True)
class Run:
    """One rendered unit's rows, sorted by ``example_id``, in the Arrow IPC file at
    :func:`run_path`; what the compile needs to count and cut shards without reading it."""

    uid: int
    split: str
    rows: int
    text_bytes: int  # UTF-8 bytes of inputs and targets
    firsts: tuple[str, ...]  # the first id of every record batch
    last: str  # the last id
    where: int = 0  # which of the compile's run folders holds it (0: on disk, 1: in memory)


def init_worker(ctx: WorkerContext) -> UnitRenderer:
    from .executor import own_worker

    if own_worker():  # a pool worker or a Ray actor: a process of flanmix's own
        tune_own_process()
        hide_pandas()
    return UnitRenderer(ctx)


class _NoPandas:
    """An import finder that says pandas is not installed (:func:`hide_pandas`)."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(
                "pandas is not imported in flanmix's compile workers", name=name
            )


def hide_pandas() -> bool:
    """Keep pandas out of a compile worker of flanmix's own; True if it is kept out.

    pyarrow imports pandas, when it is installed, the first time it converts Python objects (to
    recognise pandas objects and missing values): a quarter of a second of imports in every fresh
    worker process, as much as all of flanmix's, before its first row. A compile worker hands
    pyarrow lists and numpy arrays only and never asks it for pandas objects, so pandas is made to
    look not installed there (an import finder; pyarrow then converts without it). A worker
    forked from a caller that has pandas imported keeps it: nothing to save. Only for processes of
    flanmix's own, which run compile jobs: ``import pandas`` fails in them afterwards."""
    if "pandas" in sys.modules:
        return False
    if _NoPandas not in sys.meta_path:
        sys.meta_path.insert(0, _NoPandas)  # type: ignore[arg-type]
    return True


def _as_sorted_table(rendered: pa.Table | dict[str, list]) -> pa.Table:
    """A unit's rows as one table in ``example_id`` order (ties in render order): a table is
    checked (the renderer's are sorted already), columns given as lists go through
    :func:`flanmix.rows.sorted_table`."""
    import pyarrow.compute as pc

    if not isinstance(rendered, pa.Table):
        return sorted_table(rendered)
    table = rendered if rendered.schema == SCHEMA else rendered.cast(SCHEMA)
    ids = table.column("example_id")
    if len(ids) > 1 and not pc.all(pc.less_equal(ids[:-1], ids[1:])).as_py():
        table = table.take(pc.sort_indices(ids))  # stable
    return table


def _text_bytes(table: pa.Table) -> int:
    import pyarrow.compute as pc

    return sum(
        int(pc.sum(pc.binary_length(table.column(c))).as_py() or 0) for c in ("inputs", "targets")
    )


def render_unit_job(renderer: UnitRenderer, args: tuple) -> tuple:
    """Render one unit and write its rows, sorted by ``example_id``, as one run (no file for an
    empty unit); returns (uid, stats, :class:`Run`).

    ``args``: (unit, run folders): the folder on disk (or shared storage), and a memory-backed
    one (:func:`fast_runs_dir`) or None. A run goes to the memory-backed folder while the machine
    keeps :func:`spare_memory` beside it, else (or if that write fails) to the one on disk."""
    unit, dirs = args
    rendered, stats = renderer.render(unit)
    table = _as_sorted_table(rendered)
    del rendered
    n = table.num_rows
    firsts: tuple[str, ...] = ()
    last = ""
    where = 0
    if n:
        ids = table.column("example_id")
        firsts = tuple(ids[i].as_py() for i in range(0, n, RUN_BATCH))
        last = ids[n - 1].as_py()
        if dirs[1] is not None and spare_memory(table.nbytes):
            in_memory = run_path(dirs[1], unit.split, unit.uid)
            try:
                _write_run(table, in_memory)
                where = 1
            except OSError:  # full after all (another process took the room): on disk
                with contextlib.suppress(OSError):
                    os.unlink(in_memory)
        if where == 0:
            _write_run(table, run_path(dirs[0], unit.split, unit.uid))
    run = Run(unit.uid, unit.split, n, _text_bytes(table) if n else 0, firsts, last, where)
    del table
    _give_back_memory()
    return (unit.uid, stats, run)


def _write_run(table: pa.Table, path: str) -> None:
    with storage.open_output(path) as sink, pa.ipc.new_file(sink, SCHEMA) as w:
        w.write_table(table, max_chunksize=RUN_BATCH)


FAST_PREFIX = "flanmix-runs-"


def fast_runs_dir(tag: str) -> str | None:
    """A new folder for one compile's runs in memory (``/dev/shm/flanmix-runs-<pid>-<tag>``), or
    None where there is no such tmpfs (not Linux, a container without it, no room).

    Runs are written once and read back at once by the shard writers, then removed: on disk they
    cost the file system's work for nothing. On this project's VM (ext4), writing the 920 MB of
    runs of 50k few-shot rows took 1.4-7.2 s on disk against 0.45 s in ``/dev/shm``. Folders of
    compiles killed before they could remove theirs are removed here (their process is gone)."""
    root = Path(FAST_ROOT)
    if not sys.platform.startswith("linux") or not root.is_dir() or not os.access(root, os.W_OK):
        return None
    clean_fast_runs()
    if not spare_memory(0):
        return None
    path = root / f"{FAST_PREFIX}{os.getpid()}-{tag}"
    try:
        path.mkdir(mode=0o700)
    except OSError:
        return None
    return str(path)


def clean_fast_runs() -> list[str]:
    """Remove the memory-backed run folders of compiles whose process is gone (killed)."""
    from .publish import pid_alive

    removed = []
    for p in Path(FAST_ROOT).glob(f"{FAST_PREFIX}*"):
        pid = p.name[len(FAST_PREFIX) :].split("-", 1)[0]
        try:
            mine = p.is_dir() and not p.is_symlink() and p.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(p))
    return removed


#: A worker hands freed memory back to the system only while it holds more than this. Below it
#: the allocators' free pages serve the next unit: handing them back after every unit made the
#: next one fault every page in again (few-shot rows of ~18 kB: 1.3-3 s of system time against
#: 0.2 s, for a peak RSS of 526 instead of 553-607 MiB).
TRIM_ABOVE = 768 * 2**20


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 1 << 62  # unknown: always hand back


def _give_back_memory() -> None:
    """Hand freed heap back to the system once a worker holds more than :data:`TRIM_ABOVE`, so
    its memory stays near its current unit, not its largest one (glibc keeps freed blocks;
    Arrow's pool keeps its arenas)."""
    if _resident_bytes() <= TRIM_ABOVE:
        return
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_LIBC: list = []


def _libc():
    """glibc (``malloc_trim``, ``mallopt``, ``prctl``), or None elsewhere."""
    if not _LIBC:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.malloc_trim, libc.mallopt, libc.prctl  # noqa: B018 - glibc has all three
            _LIBC.append(libc)
        except (OSError, AttributeError):
            _LIBC.append(None)
    return _LIBC[0]


def _malloc_trim():
    libc = _libc()
    return None if libc is None else libc.malloc_trim


M_TRIM_THRESHOLD = -1  # mallopt's parameter number


def keep_freed_heap() -> None:
    """The freed top of glibc's heap stays with this process up to :data:`TRIM_ABOVE`, for the
    next unit; :func:`_give_back_memory` trims above that. Only for processes of flanmix's own
    (pool workers, the command line): it is a setting of the whole process.

    By default glibc gives the top of the heap back to the system once 128 kB of it is free (more
    once large blocks were freed), so a unit's strings, freed, could come back as fresh pages for
    the next unit: ``flanmix compile`` of 50k few-shot rows of ~18 kB on one worker took 52-64k
    page faults, 47-53k with the heap kept (on this project's VM a fault costs 5-70 us)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE)


PR_SET_THP_DISABLE, PR_GET_THP_DISABLE = 41, 42  # prctl's options (Linux 3.15 and later)


def no_huge_pages() -> None:
    """This process's memory in 4 kB pages, never transparent huge pages (inherited by the
    processes it forks). Only for processes of flanmix's own: it is a setting of the whole process.

    Arrow's allocator (mimalloc) reserves a 1 GiB arena and asks for huge pages on it
    (``madvise(MADV_HUGEPAGE)``), so where the system's THP mode is ``madvise`` (or ``always``)
    the first touch of any 2 MiB of it faults in and zeroes the whole 2 MiB. A worker is a fresh
    process every compile, so all of its memory is touched for the first time: on this project's
    VM, zeroing those huge pages was half the CPU time of a 2-worker compile of 50k long rows
    (``perf``: ``clear_page_erms`` under ``do_huge_pmd_anonymous_page``), which took 1.47-1.51 s
    best of 4 against 1.06-1.09 s with 4 kB pages (short and few-shot rows: no change beyond
    the noise)."""
    libc = _libc()
    if libc is not None and sys.platform.startswith("linux"):
        libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)  # fails (harmlessly) before Linux 3.15


def tune_own_process() -> None:
    """The memory settings of a process of flanmix's own (a pool worker, a Ray actor, the
    command line): :func:`keep_freed_heap` and :func:`no_huge_pages`."""
    keep_freed_heap()
    no_huge_pages()


def shard_count(rows: int, text_bytes: int, shard_rows: int, shard_bytes: int) -> int:
    """Shards for a split of ``rows`` rows holding ``text_bytes`` of text: none without rows, else
    enough that no shard is planned above ``shard_rows`` rows or ``shard_bytes`` of text."""
    if not rows:
        return 0
    return max(1, math.ceil(rows / shard_rows), math.ceil(text_bytes / shard_bytes))


def shard_ranges(n: int) -> list[tuple[str, str | None]]:
    """The id range ``[lo, hi)`` of each of ``n`` shards as 16-hex-digit strings (``hi`` None: to
    the end of the id space)."""
    bounds = [s * ID_SPACE // n for s in range(n + 1)] if n else []
    return [
        (format(bounds[s], "016x"), format(bounds[s + 1], "016x") if s + 1 < n else None)
        for s in range(n)
    ]


def run_path(runs_dir: str, split: str, uid: int) -> str:
    return storage.join(runs_dir, split, f"{uid:07d}.arrow")


def run_slices(runs: list[Run], lo: str, hi: str | None) -> np.ndarray:
    """(uid, first batch, end batch, folder) of every run that may hold ids in ``[lo, hi)``, in
    run order: the batches whose ids can fall in the range (the exact rows are cut when read), and
    which run folder holds it. One int64 row per run, so the jobs of many shards over many runs
    stay small."""
    out = []
    for run in runs:
        if not run.rows or run.last < lo or (hi is not None and run.firsts[0] >= hi):
            continue
        b0 = max(0, bisect.bisect_right(run.firsts, lo) - 1)
        b1 = len(run.firsts) if hi is None else bisect.bisect_left(run.firsts, hi)
        if b1 > b0:
            out.append((run.uid, b0, b1, run.where))
    return np.array(out, dtype=np.int64).reshape(-1, 4)


def _ids16(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column of 16-character ids as a numpy ``S16`` array (for binary search: bytes order as
    the hex numbers do)."""
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if arr.null_count:
        raise ValueError("example_id has nulls")
    offsets = np.frombuffer(
        arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4
    )
    if len(arr) and not np.array_equal(np.diff(offsets), np.full(len(arr), 16, dtype=np.int32)):
        raise ValueError("example_id is not 16 hex digits")
    data = arr.buffers()[2]
    start = int(offsets[0]) if len(arr) else 0
    return np.frombuffer(data, dtype="S16", count=len(arr), offset=start)


def merged(
    pieces: list[pa.Table],
    rows: int | None = None,
    done: Callable[[np.ndarray], None] | None = None,
    max_bytes: int | None = None,
) -> Iterator[pa.Table]:
    """The pieces' rows ordered by ``example_id`` (ties in piece order), each a contiguous table of
    ``rows`` rows (default ``ROW_GROUP``), or fewer where they would hold more than ``max_bytes``
    of text (default ``ROW_GROUP_BYTES``; at least one row).

    Only the ids of the whole shard are sorted; the text is copied one batch at a time, so memory
    is one batch above the (memory-mapped) pieces. A sorted piece gives each batch one slice.
    """
    import pyarrow.compute as pc

    sizes = np.array([t.num_rows for t in pieces], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    if not pieces or not starts[-1]:
        return
    rows = rows or ROW_GROUP
    max_bytes = max_bytes or ROW_GROUP_BYTES
    ids = pa.chunked_array([c for t in pieces for c in t.column("example_id").chunks], pa.string())
    order = pc.sort_indices(ids).to_numpy().astype(np.int64)  # stable, as on the pieces in a row
    text = np.concatenate([_row_bytes(t) for t in pieces])[order].cumsum()
    at = 0
    while at < len(order):
        # the most rows from `at` holding at most max_bytes of text (at least one), up to `rows`
        fit = int(np.searchsorted(text, (text[at - 1] if at else 0) + max_bytes, side="right"))
        end = min(at + rows, max(fit, at + 1))
        idx = order[at:end]
        at = end
        piece = np.searchsorted(starts, idx, side="right") - 1
        local = idx - starts[piece]
        first = np.full(len(pieces), np.iinfo(np.int64).max)
        last = np.full(len(pieces), -1)
        np.minimum.at(first, piece, local)
        np.maximum.at(last, piece, local)
        used = np.flatnonzero(last >= 0)
        width = np.zeros(len(pieces), dtype=np.int64)
        width[used] = last[used] - first[used] + 1
        base = np.concatenate([[0], np.cumsum(width)])[:-1]
        parts = [pieces[p].slice(int(first[p]), int(width[p])) for p in used]
        batch = pa.concat_tables(parts)  # the slices, not copied
        take = base[piece] + local - first[piece]
        if np.array_equal(take, np.arange(len(take))):
            yield batch.combine_chunks()
        else:  # gathered straight from the slices: the text is copied once
            yield batch.take(pa.array(take))
        if done is not None:  # these pieces' pages may leave memory (read again if needed)
            done(used)


def _row_bytes(table: pa.Table) -> np.ndarray:
    """UTF-8 bytes of every row's inputs and targets (read from the offsets, not the text)."""
    import pyarrow.compute as pc

    out = np.zeros(table.num_rows, dtype=np.int64)
    for name in ("inputs", "targets"):
        out += pc.binary_length(table.column(name)).to_numpy(zero_copy_only=False)
    return out


def write_shard(batches: Iterable[pa.Table], path: str, file_format: str) -> int:
    """Write ``batches`` (each one row group, from :func:`merged`) to one shard; returns its rows."""
    n = 0
    if file_format == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(
            path,
            SCHEMA,
            compression="zstd",
            use_dictionary=[n for n in SCHEMA.names if n not in PLAIN_COLUMNS],
            write_statistics=True,
            store_schema=True,
        ) as w:
            for batch in batches:
                w.write_table(batch, row_group_size=ROW_GROUP)
                n += batch.num_rows
            if not n:  # an empty shard: one empty row group, as pyarrow writes an empty table
                w.write_table(SCHEMA.empty_table(), row_group_size=ROW_GROUP)
    else:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as w:
            for batch in batches:
                for b in batch.to_batches(max_chunksize=ROW_GROUP):
                    w.write_batch(b)
                n += batch.num_rows
    return n


def _cut(reader: pa.ipc.RecordBatchFileReader, b0: int, b1: int, lo: str, hi: str | None):
    """Batches ``b0:b1`` of a run, cut to the ids in ``[lo, hi)``."""
    table = pa.Table.from_batches([reader.get_batch(i) for i in range(b0, b1)], SCHEMA)
    ids = _ids16(table.column("example_id"))
    start = int(np.searchsorted(ids, lo.encode(), side="left"))
    stop = len(ids) if hi is None else int(np.searchsorted(ids, hi.encode(), side="left"))
    return table.slice(start, max(0, stop - start))


def _read_run(
    location: str, b0: int, b1: int, lo: str, hi: str | None, *, mapped: bool
) -> tuple[pa.Table, mmap.mmap | None]:
    """The rows of batches ``b0:b1`` of a run with ids in ``[lo, hi)``.

    ``mapped`` (local files): memory-mapped, with the map, so that the merge can drop the pages it
    has copied from the process's memory (``MADV_DONTNEED``: a file's pages are read again if
    touched). Otherwise the batches are read into memory and the file is closed at once: fsspec
    URLs (a batch read is a ranged read), and local runs beyond the open-files budget (a map holds
    a file descriptor)."""
    if mapped and not storage.is_url(location):
        with open(location, "rb") as fh:
            whole = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        # the map closes with the last buffer using it
        return _cut(pa.ipc.open_file(pa.py_buffer(whole)), b0, b1, lo, hi), whole
    if storage.is_url(location):
        with storage.open_input(location) as fh:
            return _cut(pa.ipc.open_file(pa.PythonFile(fh, mode="r")), b0, b1, lo, hi), None
    with pa.OSFile(location) as fh:
        return _cut(pa.ipc.open_file(fh), b0, b1, lo, hi), None


def _own_copy(table: pa.Table) -> pa.Table:
    """``table``'s rows copied into memory of their own, one chunk a column (a concatenation
    copies only the rows' bytes: half the time of a ``take`` of every row)."""
    if not table.num_rows:
        return SCHEMA.empty_table()
    return pa.Table.from_arrays(
        [pa.concat_arrays(col.chunks) for col in table.columns], schema=table.schema
    )


def _open_files_budget(want: int) -> int:
    """How many runs a shard writer may keep mapped: the open-files limit (raised up to the hard
    limit if ``want`` needs it), less a margin for everything else the process has open."""
    try:
        import resource
    except ImportError:  # not POSIX: no limit to raise
        return want
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = want + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        raise_to = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raise_to, hard))
            soft = raise_to
        except (ValueError, OSError):
            pass
    return want if soft == resource.RLIM_INFINITY else max(0, soft - 256)


def write_shard_job(_renderer: UnitRenderer, args: tuple) -> dict[str, Any]:
    """Merge one shard's slices of the sorted runs in ``example_id`` order into ``out_dir``, hash it.

    ``args``: (split, index, count, run folders (as for :func:`render_unit_job`), slices from
    :func:`run_slices`, lo, hi, out_dir, format). Row groups are written as they are merged: the
    shard is never gathered whole.
    """
    split, index, count, dirs, slices, lo, hi, out_dir, file_format = args
    parts, maps = [], []
    budget = _open_files_budget(len(slices)) if hasattr(mmap, "MADV_DONTNEED") else 0
    copied = 0
    for k, (uid, b0, b1, folder) in enumerate(slices.tolist()):
        where = run_path(dirs[folder], split, uid)
        part, mapped = _read_run(where, b0, b1, lo, hi, mapped=k < budget)
        size = part.nbytes
        if mapped is not None and size <= SMALL_SLICE and copied + size <= COPY_BUDGET:
            # a small slice is copied and its map closed: every page the merge touches in a map
            # brings its neighbours along (fault-around), ~0.2 MiB a run for a few rows each
            part, mapped = _own_copy(part), None
            copied += size
        if part.num_rows:
            parts.append(part)
            maps.append(mapped)

    def done(used: np.ndarray) -> None:
        for p in used:
            if maps[p] is not None:
                maps[p].madvise(mmap.MADV_DONTNEED)

    batches = merged(parts, done=done if hasattr(mmap, "MADV_DONTNEED") else None)
    name = shard_name(split, index, count, file_format)
    if storage.is_url(out_dir):  # written here, then copied to shared storage
        import tempfile

        with tempfile.TemporaryDirectory(prefix="flanmix-shard-") as local:
            path = Path(local) / name
            rows = write_shard(batches, str(path), file_format)
            entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            storage.put(path, storage.join(out_dir, name))
    else:
        path = Path(out_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)  # a scratch folder's shards/ (workers race)
        rows = write_shard(batches, str(path), file_format)
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    del parts, batches, done  # the maps close with the last table using them
    _give_back_memory()
    return {"file": name, "rows": rows, **entry}
