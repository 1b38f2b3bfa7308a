"""Where a task's rows come from, resolved once in the main process and read in workers.

:func:`resolve_source` turns a task's ``source`` into a small picklable :class:`SourceHandle`:

- ``hub``: ``datasets.load_dataset(path, name, split=..., revision=...)`` (the real code path,
  including its cache); workers then memory-map the dataset's Arrow cache files.
- ``local``: Parquet files are read with pyarrow directly (row groups, memory-mapped); JSON and CSV
  go through ``datasets.load_dataset(format, data_files=...)`` and are read like hub datasets.
- ``samples``: the task's own sample rows, used with ``offline=True`` (for hub and local task
  sources alike; a spec's ``sources`` folders are still read) or when the hub cannot be reached. The handle says so, and the compiler prints it and records it in the manifest.

A missing local file or a dataset that fails to load for any reason other than the network is a
:class:`SourceError` naming the task.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import storage
from .errors import Location, SourceError
from .schema import ALLOW_OUTSIDE, Task, outside_allowed

_SLICE = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def base_split(split: str) -> str:
    """The split a sliced split name reads: ``validation[:-200]`` -> ``validation``."""
    part = _SLICE.match(split)
    return part["name"] if part else split


@dataclass
class SourceHandle:
    """How to read one split of one task; small and picklable."""

    task: str
    split: str  # the source split name (e.g. "train", "validation", or "samples")
    kind: str  # "samples" | "parquet" | "arrow" | "niv2"
    description: str  # shown to people: hub:nyu-mll/glue/rte@train, local:..., samples (offline)
    num_rows: int
    files: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] | None = None  # samples only
    start: int = 0  # a sliced split ("validation[:-200]"): its first row in the files
    #: mean bytes of a source row (every column, uncompressed; Parquet: as encoded, so a column of
    #: repeated values counts little), 0 where unknown: long rows make
    #: smaller work units (:func:`flanmix.plan.unit_draws`)
    row_bytes: float = 0.0

    @property
    def is_samples(self) -> bool:
        return self.kind == "samples"


class HubState:
    """Remembers that the hub was unreachable, so later tasks fall back at once instead of retrying."""

    def __init__(self, offline: bool, root: Path | None = None):
        from .sources_check import hub_root

        self.offline = offline
        self.unreachable: str | None = None
        #: a folder standing in for the hub (``FLANMIX_HUB_ROOT``; see flanmix.sources_check)
        self.root = root if root is not None else hub_root()
        #: task -> why it reads its samples: the pre-flight found the hub unreachable for it
        self.fallback: dict[str, str] = {}


def _network_error(exc: BaseException) -> bool:
    """True for errors that mean "the hub cannot be reached" (not "the dataset is broken")."""
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {
        "OfflineModeIsEnabled",
        "LocalEntryNotFoundError",
        "Timeout",
        "ConnectTimeout",
        "ReadTimeout",
    }:
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return "ConnectionError" in names or "ConnectError" in names


network_error = _network_error  # public: the pre-flight (flanmix.sources_check) classifies alike


def _samples(task: Task, split: str, why: str) -> SourceHandle:
    return SourceHandle(
        task=task.id,
        split=split,
        kind="samples",
        description=f"samples ({why})",
        num_rows=len(task.samples),
        rows=[dict(r) for r in task.samples],
    )


def _arrow_handle(ds, task: Task, split: str, what: str) -> SourceHandle:
    """A handle on the memory-mappable Arrow cache files behind a ``datasets.Dataset``, with its
    rows and the mean bytes of a row (from the mapped table's buffers: nothing is read)."""
    if getattr(ds, "_indices", None) is not None:
        ds = ds.flatten_indices()
    files = [f["filename"] for f in ds.cache_files]
    if not files:
        raise SourceError(
            f"{what} loaded in memory only (no Arrow cache files to share with workers)",
            location=Location(task=task.id),
        )
    table = ds.data
    return SourceHandle(
        task=task.id,
        split=split,
        kind="arrow",
        description=what,
        num_rows=len(ds),
        files=files,
        row_bytes=table.nbytes / table.num_rows if table.num_rows else 0.0,
    )


def resolve_source(
    task: Task, role: str, *, base_dir: Path, hub: HubState, local_dir: Path | None = None
) -> SourceHandle | None:
    """The source of a task's ``role`` split ("train" or "eval"); None when the task has no such split."""
    split = getattr(task.source.splits, role)
    if split is None:
        return None
    part = _SLICE.match(split)
    if part:  # "validation[:-200]": rows of one split (FLAN trains story_cloze on these)
        splits = task.source.splits.model_copy(update={role: part["name"]})
        whole = task.model_copy(
            update={"source": task.source.model_copy(update={"splits": splits})}
        )
        handle = resolve_source(whole, role, base_dir=base_dir, hub=hub, local_dir=local_dir)
        if handle is None or handle.is_samples:  # samples stand for every split
            return handle
        to_int = lambda v: int(v) if v else None  # noqa: E731
        start, stop, _ = slice(to_int(part["start"]), to_int(part["stop"])).indices(handle.num_rows)
        handle.start += start
        handle.num_rows = max(0, stop - start)
        handle.split = split
        handle.description += f"[{part['start']}:{part['stop']}]"
        return handle
    loc = Location(task=task.id, field=f"source.splits.{role}")
    if local_dir is not None:
        return _from_folder(task, split, local_dir, loc)
    if task.source.niv2 is not None:  # a file on disk, read even offline (no network needed)
        return _from_niv2(task, split, base_dir, loc)
    if hub.offline:  # the task's own source (hub or local files) is replaced by its samples
        return _samples(task, "samples", "offline")
    if task.source.local is not None:
        return _from_local(task, split, base_dir, loc)
    hf = task.source.hf
    if hub.unreachable:
        return _samples(task, "samples", f"hub unreachable: {hub.unreachable}")
    if task.id in hub.fallback:
        return _samples(task, "samples", f"hub unreachable: {hub.fallback[task.id]}")
    import datasets

    from .sources_check import local_repo

    repo = local_repo(hf, hub.root)  # a repository-shaped folder plays the hub repo
    path, revision = (str(repo), None) if repo is not None else (hf.path, hf.revision)

    what = f"hub:{hf.path}" + (f"/{hf.name}" if hf.name else "") + f"@{split}"
    try:
        ds = datasets.load_dataset(
            path, hf.name, split=split, revision=revision, data_dir=hf.data_dir
        )
    except Exception as exc:  # noqa: BLE001 - network errors fall back, the rest are the source's
        if _network_error(exc):
            hub.unreachable = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            return _samples(task, "samples", f"hub unreachable: {hub.unreachable}")
        hint = (
            task.source.manual_download
            or "check source.hf (path, name) and source.splits in the task file"
        )
        raise SourceError(
            f"cannot load {what}: {type(exc).__name__}: {exc}", location=loc, hint=hint
        ) from exc
    return _arrow_handle(ds, task, split, what)


def _from_niv2(task: Task, split: str, base_dir: Path, loc: Location) -> SourceHandle:
    """An NIv2 task file: its instance count is the import's while the file keeps its size."""
    from .niv2 import NIv2Error, count_instances

    src = task.source.niv2
    path = (Path(src.file) if Path(src.file).is_absolute() else base_dir / src.file).resolve()
    if not path.is_file():
        raise SourceError(
            f"NIv2 task file not found: {path}",
            location=loc.with_(field="source.niv2.file"),
            hint="import again with 'flanmix import natural-instructions' from the repository's "
            "tasks/ folder, or fix the path (relative to the task file)",
        )
    n = src.instances
    if n is None or src.bytes != path.stat().st_size:
        try:
            n = count_instances(path)
        except NIv2Error as exc:
            raise SourceError(exc.message, location=exc.location, hint=exc.hint) from exc
    return SourceHandle(
        task=task.id,
        split=split,
        kind="niv2",
        description=f"niv2:{path}",
        num_rows=n,
        files=[str(path)],
    )


def _from_local(task: Task, split: str, base_dir: Path, loc: Location) -> SourceHandle:
    local = task.source.local
    if split not in local.files:
        raise SourceError(
            f"local source has no file for split {split!r}",
            location=loc,
            hint=f"splits in source.local.files: {', '.join(local.files)}",
        )
    given = local.files[split]
    paths = [
        Path(p) if Path(p).is_absolute() else base_dir / p
        for p in ([given] if isinstance(given, str) else given)
    ]
    _check_inside(paths, base_dir, loc, "the task's folder")
    return _open_files(task, split, local.format, paths, loc)


def _check_inside(paths: list[Path], root: Path, loc: Location, name: str) -> None:
    """Local sources read only inside ``root`` (links followed) unless allowed explicitly: a task
    file must not turn someone's credentials.csv into mixture rows."""
    if outside_allowed():
        return
    top = root.resolve()
    for p in paths:
        real = p.resolve()
        if real != top and top not in real.parents:
            raise SourceError(
                f"local source file {p} is outside {name} ({top})",
                location=loc,
                hint=f"move the data inside it, or allow other paths with {ALLOW_OUTSIDE}=1 "
                "(flanmix compile --allow-outside-sources)",
            )


def _from_folder(task: Task, split: str, folder: Path, loc: Location) -> SourceHandle:
    for fmt, exts in (
        ("parquet", (".parquet",)),
        ("json", (".jsonl", ".json")),
        ("csv", (".csv",)),
    ):
        for ext in exts:
            path = folder / f"{split}{ext}"
            if path.exists():
                _check_inside([path], folder, loc.with_(field="sources"), "its sources folder")
                return _open_files(task, split, fmt, [path], loc)
    raise SourceError(
        f"no {split}.parquet, {split}.jsonl or {split}.csv in {folder}",
        location=loc.with_(field="sources"),
        hint="the spec's 'sources' maps a task to a folder with one file per split",
    )


def _open_files(task: Task, split: str, fmt: str, paths: list[Path], loc: Location) -> SourceHandle:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        from .source_build import build_hint

        raise SourceError(
            f"local source file not found: {', '.join(missing)}",
            location=loc,
            hint=build_hint(task.id) or task.source.manual_download,
        )
    what = "local:" + ",".join(str(p) for p in paths)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            metas = [pq.ParquetFile(p).metadata for p in paths]
        except Exception as exc:  # noqa: BLE001
            raise SourceError(f"cannot read {what}: {exc}", location=loc) from exc
        n = sum(m.num_rows for m in metas)
        size = sum(m.row_group(i).total_byte_size for m in metas for i in range(m.num_row_groups))
        return SourceHandle(
            task=task.id,
            split=split,
            kind="parquet",
            description=what,
            num_rows=n,
            files=[str(p) for p in paths],
            row_bytes=size / n if n else 0.0,
        )
    import datasets

    try:
        ds = datasets.load_dataset(fmt, data_files={split: [str(p) for p in paths]}, split=split)
    except Exception as exc:  # noqa: BLE001
        raise SourceError(f"cannot load {what}: {load_failure(exc)}", location=loc) from exc
    return _arrow_handle(ds, task, split, what)


def load_failure(exc: BaseException) -> str:
    """One line saying why ``datasets`` could not load a JSON or CSV file: the error under its
    "DatasetGenerationError: An error occurred while generating the dataset" (a JSON parse error
    with its row, a CSV line with its cell count, a byte that is not UTF-8), not the wrapper."""
    if isinstance(exc, StopIteration):  # what datasets raises for a file of no rows
        return "the file has no rows (it is empty)"
    real, chain = exc, exc
    for _ in range(8):
        chain = chain.__cause__ or chain.__context__
        if chain is None:
            break
        if type(exc).__name__ == "DatasetGenerationError" and real is exc and str(chain).strip():
            real = chain
    text = " ".join(str(real).split())[:300]
    return f"{type(real).__name__}: {text}" if text else type(real).__name__


# ----------------------------------------------------------------------------- reading (in workers)


def _rows_at(table: pa.Table, rows: np.ndarray) -> list[dict[str, Any]]:
    """``table``'s rows at ``rows`` as dicts; a run of consecutive rows (a full pass over a
    source) is sliced, not copied."""
    if len(rows) and (len(rows) == 1 or bool(np.all(np.diff(rows) == 1))):
        return table.slice(int(rows[0]), len(rows)).to_pylist()
    return table.take(pa.array(rows)).to_pylist()


@dataclass
class _Spilled:
    """A row group decoded into an unnamed temporary file, as a table over its memory map."""

    table: pa.Table
    file: Any  # the open temporary file (its space is freed once it is closed and unmapped)
    size: int


#: Bytes of source rows per record batch of a spilled row group.
SPILL_BATCH_BYTES = 8 * 2**20


def _spill_group(pf: Any, group: int) -> _Spilled:
    """Row group ``group`` of ``pf`` decoded one batch at a time into an Arrow IPC stream in an
    unnamed temporary file (nothing is left behind, even if the process is killed), and read
    back as a table over the file's memory map: its slices are not copied, and its pages are
    the page cache's, read again from the file if the system needs the memory."""
    import mmap
    import tempfile

    meta = pf.metadata.row_group(group)
    per_row = meta.total_byte_size / max(meta.num_rows, 1)
    batch = int(min(max(SPILL_BATCH_BYTES // max(per_row, 1.0), 1), 1 << 16))
    # in memory (Linux's /dev/shm) while the machine has room for it (twice the group's size as
    # Parquet encodes it: dictionary-encoded text decodes larger); on a VM's disk, writing a few
    # hundred MB can take seconds
    fast = sys.platform.startswith("linux") and storage.spare_memory(2 * meta.total_byte_size)
    where = storage.FAST_ROOT if fast else None
    fh = tempfile.TemporaryFile(prefix="flanmix-rows-", dir=where)  # noqa: SIM115 - mapped
    try:
        # the stream format: a column read as a dictionary may change its dictionary per batch
        with pa.ipc.new_stream(fh, pf.schema_arrow) as writer:
            for part in pf.iter_batches(batch_size=batch, row_groups=[group]):
                writer.write_batch(part)
        fh.flush()
        size = fh.tell()
        view = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        table = pa.ipc.open_stream(pa.BufferReader(pa.py_buffer(view))).read_all()
    except BaseException:
        fh.close()
        raise
    return _Spilled(table, fh, size)


#: The most bytes of spilled row groups a :class:`SpillCache` keeps (at least the one being read).
SPILL_BYTES = 1 << 30


class SpillCache:
    """Row groups above :attr:`SourceReader.KEEP_BYTES`, each decoded once into an unnamed
    temporary Arrow file (:func:`_spill_group`) and read from its memory map by every reader
    sharing the cache (a worker's readers share one): pyarrow and pandas write a file's rows as one
    group of up to a million rows by default, Spark 128 MB groups, and such a group would
    otherwise be decoded again by every unit reading a part of it. Up to :data:`SPILL_BYTES` are
    kept, the least recently read dropped first; a dropped copy's file goes with its last
    reference."""

    def __init__(self) -> None:
        self._groups: dict[tuple, _Spilled] = {}  # (path, size, mtime, group), oldest read first

    def table(self, path: str, pf: Any, group: int) -> pa.Table:
        """Row group ``group`` of ``pf`` (opened from ``path``), from its spilled copy."""
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, group)
        got = self._groups.pop(key, None)
        if got is None:
            got = _spill_group(pf, group)
        self._groups[key] = got  # the most recently read last
        while len(self._groups) > 1 and self.nbytes > SPILL_BYTES:
            del self._groups[next(iter(self._groups))]
        return got.table

    @property
    def nbytes(self) -> int:
        return sum(g.size for g in self._groups.values())

    def groups(self) -> list[int]:
        """The row groups held, least recently read first."""
        return [k[-1] for k in self._groups]


class SourceReader:
    """Reads rows by sorted index from a :class:`SourceHandle` without loading the whole source.

    ``spills``: where row groups too large to keep in memory are spilled (:class:`SpillCache`;
    default: one of the reader's own)."""

    def __init__(self, handle: SourceHandle, spills: SpillCache | None = None):
        self.handle = handle
        self._table: pa.Table | None = None
        self._files: list[Any] = []
        self._offsets: list[int] = []
        self._kept: dict[tuple[int, int], pa.Table] = {}  # (file, row group): its rows
        self._paths: dict[int, str] = {}  # id of an open file: its path
        self._niv2: Any = None  # an NIv2 file's InstanceReader, which reads on between calls
        self.spills = spills if spills is not None else SpillCache()
        if handle.kind == "arrow":
            tables = []
            for f in handle.files:
                source = pa.memory_map(f)
                try:
                    tables.append(pa.ipc.open_stream(source).read_all())
                except pa.ArrowInvalid:
                    tables.append(pa.ipc.open_file(pa.memory_map(f)).read_all())
            self._table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        elif handle.kind == "parquet":
            import pyarrow.parquet as pq

            for f in handle.files:
                pf = pq.ParquetFile(f, memory_map=True)
                offsets = [0]
                for i in range(pf.metadata.num_row_groups):
                    offsets.append(offsets[-1] + pf.metadata.row_group(i).num_rows)
                self._files.append((pf, offsets))
                self._paths[id(pf)] = f

    #: The row groups of the last read are kept for the next unit when they hold at most this
    #: many bytes: consecutive units of a task read the same groups (a unit of few-shot rows is a
    #: fifth of a 10k-row group; a pass over a source crosses a group's end mid-unit).
    KEEP_BYTES = 64 * 2**20

    def _row_groups(self, pf: Any, first: int, last: int) -> pa.Table:
        """Row groups ``first..last`` of ``pf`` as one table. Groups kept from the last read are
        used again, not read again; the others are dropped before reading, so a reader holds one
        read's groups at a time (the last, if within KEEP_BYTES). Groups larger than that are
        read from their spilled copies (:class:`SpillCache`)."""
        want = [(id(pf), i) for i in range(first, last + 1)]
        kept = {k: t for k, t in self._kept.items() if k in want}
        self._kept = {}
        meta = pf.metadata
        big = {k for k in want if meta.row_group(k[1]).total_byte_size > self.KEEP_BYTES}
        parts = []
        for k in want:
            if k in big:
                parts.append(self.spills.table(self._paths[id(pf)], pf, k[1]))
            else:
                # one thread: a worker is one of a process per core already, and Arrow's threads
                # on a process with transparent huge pages (a library caller's) made a 34 MB
                # group's read take 0.06-1.5 s against 0.03 s (1 worker, 50k long rows: 6-15%)
                parts.append(kept[k] if k in kept else pf.read_row_group(k[1], use_threads=False))
        small = [(k, t) for k, t in zip(want, parts, strict=True) if k not in big]
        if small and sum(t.nbytes for _, t in small) <= self.KEEP_BYTES:
            self._kept = dict(small)
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def close(self) -> None:
        """Close what the reader holds open between reads (an NIv2 file)."""
        if self._niv2 is not None:
            self._niv2.close()

    def read(self, indices: np.ndarray) -> list[dict[str, Any]]:
        """Rows at ``indices`` (sorted ascending), as dicts."""
        h = self.handle
        if h.kind == "samples":
            return [h.rows[i] for i in indices.tolist()]
        if h.kind == "niv2":
            if self._niv2 is None:
                from .niv2 import InstanceReader

                self._niv2 = InstanceReader(h.files[0])
            return self._niv2.read(indices.tolist())
        if h.start:
            indices = indices + h.start
        if self._table is not None:
            return _rows_at(self._table, indices)
        out: list[dict[str, Any]] = []
        base = 0
        idx = indices
        for pf, offsets in self._files:
            n = offsets[-1]
            mine = idx[(idx >= base) & (idx < base + n)] - base
            if len(mine):
                first = int(np.searchsorted(offsets, mine[0], side="right")) - 1
                last = int(np.searchsorted(offsets, mine[-1], side="right")) - 1
                out.extend(_rows_at(self._row_groups(pf, first, last), mine - offsets[first]))
            base += n
        return out
