"""A plain Parquet file's column types are checked without importing ``datasets``: the kinds
must be what ``datasets.Features.from_arrow_schema`` would give (the pre-flight compares them with
the task's declared fields)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flanmix.sources_check import _arrow_kind, _kind

TYPES = [
    pa.string(),
    pa.large_string(),
    pa.int8(),
    pa.uint64(),
    pa.int64(),
    pa.float16(),
    pa.float32(),
    pa.float64(),
    pa.bool_(),
    pa.null(),
    pa.list_(pa.string()),
    pa.large_list(pa.int32()),
    pa.list_(pa.list_(pa.float32())),
    pa.struct([("a", pa.string()), ("b", pa.list_(pa.int64()))]),
    pa.list_(pa.struct([("x", pa.string())])),
    pa.list_(pa.string(), 3),
    pa.timestamp("s"),
    pa.binary(),
    pa.date32(),
]


@pytest.mark.parametrize("arrow_type", TYPES, ids=str)
def test_arrow_kind_is_what_datasets_gives(arrow_type):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features.from_arrow_schema(pa.schema([("c", arrow_type)]))
    assert _arrow_kind(arrow_type) == _kind(features["c"])


def test_plain_parquet_preflight_does_not_import_datasets(tmp_path):
    import subprocess
    import sys

    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"premise": ["a"], "label": [0]}), path)
    # _Probe.features_from_file reads the schema with pyarrow alone
    probe = (
        "import sys, types\n"
        "from flanmix import sources_check as sc\n"
        "seen = {}\n"
        "p = sc._Probe.__new__(sc._Probe)\n"
        "p.compare = lambda features, what: seen.update(features)\n"
        "p.problem = lambda *a, **k: seen.update(problem=a)\n"
        f"p.features_from_file({str(path)!r}, 'x')\n"
        "print(sorted(seen), 'datasets' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['label',", "'premise']", "False"]


CARD_SCHEMAS = [
    pa.schema([("a", pa.float32()), ("b", pa.list_(pa.int64())), ("d", pa.large_string())]),
    pa.schema([("c", pa.struct([("x", pa.string()), ("y", pa.list_(pa.bool_()))]))]),
    pa.schema([("e", pa.list_(pa.list_(pa.string()))), ("f", pa.uint16()), ("g", pa.float64())]),
    pa.schema([("h", pa.large_list(pa.string())), ("i", pa.int8()), ("j", pa.float16())]),
    pa.schema([("k", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))]),
    pa.schema([("t", pa.timestamp("s"))]),  # not written here: datasets writes it
]


@pytest.mark.parametrize("schema", CARD_SCHEMAS, ids=lambda s: ",".join(s.names))
def test_card_features_are_what_datasets_writes(schema):
    datasets = pytest.importorskip("datasets")
    from flanmix.card import features

    assert features(schema) == datasets.Features.from_arrow_schema(schema)._to_yaml_list()


def test_card_features_of_every_written_schema():
    datasets = pytest.importorskip("datasets")
    from flanmix.card import features
    from flanmix.mixture import SCHEMA

    assert features(SCHEMA) == datasets.Features.from_arrow_schema(SCHEMA)._to_yaml_list()
