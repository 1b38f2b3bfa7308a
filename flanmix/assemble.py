"""Assembling shards: a unit's rows split into per-shard pieces, then pieces into ordered, hashed shards.

Both are job functions for an executor (:mod:`flanmix.executor`): every worker builds one
:class:`~flanmix.rows.UnitRenderer` from the :class:`~flanmix.rows.WorkerContext` (:func:`init_worker`),
then runs :func:`render_unit_job` per unit and :func:`write_shard_job` per shard. A row's shard is
picked by its ``example_id``, and a shard's rows are ordered by it, so neither depends on the number
of workers. Pieces and shards go through :mod:`flanmix.storage`, so on a cluster they can live on
shared storage (``executor.scratch``).
"""

from __future__ import annotations

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
    """Render one unit and write its per-shard pieces; returns (uid, stats, rows)."""
    unit, pieces_dir = args
    cols, stats = renderer.render(unit)
    nshards = renderer.ctx.shards[unit.split]
    n = len(cols["example_id"])
    if n:
        table = pa.Table.from_pydict(cols, schema=SCHEMA)
        shard_of = np.array([int(e[:8], 16) % nshards for e in cols["example_id"]], dtype=np.int64)
        order = np.argsort(shard_of, kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(nshards + 1))
        for s in range(nshards):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            if hi > lo:
                part = table.take(pa.array(order[lo:hi]))
                path = storage.join(pieces_dir, unit.split, f"{s:05d}", f"{unit.uid:07d}.arrow")
                with storage.open_output(path) as sink, pa.ipc.new_file(sink, SCHEMA) as w:
                    w.write_table(part)
    return (unit.uid, stats, n)


def write_shard(table: pa.Table, path: str, file_format: str) -> None:
    if file_format == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(
            table,
            path,
            row_group_size=ROW_GROUP,
            compression="zstd",
            use_dictionary=True,
            write_statistics=True,
            store_schema=True,
        )
    else:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as w:
            for batch in table.to_batches(max_chunksize=ROW_GROUP):
                w.write_batch(batch)


def write_shard_job(_renderer: UnitRenderer, args: tuple) -> dict[str, Any]:
    """Merge one shard's pieces, order by example_id, write it to ``out_dir``, hash it."""
    split, index, count, pieces_dir, out_dir, file_format = args
    folder = storage.join(pieces_dir, split, f"{index:05d}")
    tables = [storage.read_arrow(piece) for piece in storage.list_files(folder)]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    del tables
    if table.num_rows:
        import pyarrow.compute as pc

        table = table.take(pc.sort_indices(table, sort_keys=[("example_id", "ascending")]))
    table = table.combine_chunks()
    name = shard_name(split, index, count, file_format)
    if storage.is_url(out_dir):  # written here, then copied to shared storage
        import tempfile

        with tempfile.TemporaryDirectory(prefix="flanmix-shard-") as local:
            path = Path(local) / name
            write_shard(table, str(path), file_format)
            entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            storage.put(path, storage.join(out_dir, name))
    else:
        path = Path(out_dir) / name
        write_shard(table, str(path), file_format)
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    storage.remove(folder)
    return {"file": name, "rows": table.num_rows, **entry}
