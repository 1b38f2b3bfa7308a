"""Assembling shards: a unit's rows split into per-shard pieces, then pieces into ordered, hashed shards.

Both are job functions for an executor (:mod:`flanmix.executor`): every worker builds one
:class:`~flanmix.rows.UnitRenderer` from the :class:`~flanmix.rows.WorkerContext` (:func:`init_worker`),
then runs :func:`render_unit_job` per unit and :func:`write_shard_job` per shard. A row's shard is
picked by its ``example_id``, and a shard's rows are ordered by it, so neither depends on the number
of workers. Pieces and shards go through :mod:`flanmix.storage`, so on a cluster they can live on
shared storage (``executor.scratch``).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import storage
from .mixture import SCHEMA, sha256_file, shard_name
from .rows import UnitRenderer, WorkerContext

ROW_GROUP = 10_000


def init_worker(ctx: WorkerContext) -> UnitRenderer:
    return UnitRenderer(ctx)


def render_unit_job(renderer: UnitRenderer, args: tuple) -> tuple:
    """Render one unit and write its per-shard pieces, each sorted by ``example_id`` (a sorted run
    for the shard writer to merge); returns (uid, stats, rows)."""
    unit, pieces_dir = args
    table, stats = renderer.render(unit)  # in example_id order
    nshards = renderer.ctx.shards[unit.split]
    n = table.num_rows
    if n:
        bounds = np.array([0, n])
        if nshards > 1:  # the shard is picked by the first 8 hex digits
            key = np.array([int(e, 16) for e in table.column("example_id").to_pylist()], np.uint64)
            shard_of = (key >> np.uint64(32)) % np.uint64(nshards)
            order = np.argsort(shard_of, kind="stable")
            table = table.take(pa.array(order))
            bounds = np.searchsorted(shard_of[order], np.arange(nshards + 1, dtype=np.uint64))
        for s in range(nshards):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            if hi > lo:
                part = table.slice(lo, hi - lo)
                path = storage.join(pieces_dir, unit.split, f"{s:05d}", f"{unit.uid:07d}.arrow")
                with storage.open_output(path) as sink, pa.ipc.new_file(sink, SCHEMA) as w:
                    w.write_table(part)
    return (unit.uid, stats, n)


def merged(
    pieces: list[pa.Table],
    rows: int | None = None,
    done: Callable[[np.ndarray], None] | None = None,
) -> Iterator[pa.Table]:
    """The pieces' rows ordered by ``example_id`` (ties in piece order), ``rows`` at a time, each a
    contiguous table.

    Only the ids of the whole shard are sorted; the text is copied one batch at a time, so memory
    is one batch above the (memory-mapped) pieces. A sorted piece gives each batch one slice.
    """
    import pyarrow.compute as pc

    sizes = np.array([t.num_rows for t in pieces], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    if not pieces or not starts[-1]:
        return
    rows = rows or ROW_GROUP
    ids = pa.chunked_array([c for t in pieces for c in t.column("example_id").chunks], pa.string())
    order = (
        pc.sort_indices(ids).to_numpy().astype(np.int64)
    )  # stable, as on the pieces concatenated
    for at in range(0, len(order), rows):
        idx = order[at : at + rows]
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
        batch = pa.concat_tables(parts).combine_chunks()
        take = base[piece] + local - first[piece]
        if not np.array_equal(take, np.arange(len(take))):
            batch = batch.take(pa.array(take))
        yield batch
        if done is not None:  # these pieces' pages may leave memory (read again if needed)
            done(used)


def write_shard(batches: Iterable[pa.Table], path: str, file_format: str) -> int:
    """Write ``batches`` (each ``ROW_GROUP`` rows but the last) to one shard; returns its rows."""
    n = 0
    if file_format == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(
            path,
            SCHEMA,
            compression="zstd",
            use_dictionary=True,
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


def _read_piece(location: str) -> tuple[pa.Table, mmap.mmap | None]:
    """A piece's table, memory-mapped when local; with the map, so that the merge can drop the
    pages it has copied from the process's memory (``MADV_DONTNEED``: a file's pages are read
    again if touched), and a shard of long rows never sits in memory whole."""
    if storage.is_url(location) or not hasattr(mmap, "MADV_DONTNEED"):
        return storage.read_arrow(location), None
    with open(location, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return pa.ipc.open_file(pa.py_buffer(mapped)).read_all(), mapped


def write_shard_job(_renderer: UnitRenderer, args: tuple) -> dict[str, Any]:
    """Merge one shard's sorted pieces in ``example_id`` order into ``out_dir``, hash it.

    Row groups are written as they are merged: the shard is never gathered whole.
    """
    split, index, count, pieces_dir, out_dir, file_format = args
    folder = storage.join(pieces_dir, split, f"{index:05d}")
    pieces, maps = [], []
    for piece in storage.list_files(folder):
        table, mapped = _read_piece(piece)
        pieces.append(table)
        maps.append(mapped)

    def done(used: np.ndarray) -> None:
        for p in used:
            if maps[p] is not None:
                maps[p].madvise(mmap.MADV_DONTNEED)

    batches = merged(pieces, done=done)
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
        rows = write_shard(batches, str(path), file_format)
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    del pieces, batches, done  # the maps close with the last table using them
    storage.remove(folder)
    return {"file": name, "rows": rows, **entry}
