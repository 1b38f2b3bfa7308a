"""The shard writer merges sorted pieces in row groups: the same Parquet bytes as sorting the whole
shard at once (and the same Arrow batches)."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flanmix import assemble
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
            use_dictionary=True,
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
