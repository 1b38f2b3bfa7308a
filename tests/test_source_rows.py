"""Hostile source rows: labels below -1, nulls, wrong types and broken files in a spec's local
``sources`` folder are errors naming the file and row, or skips with a counted reason; never a
wrong gold answer or the text "None" in a rendered row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanmix.catalog import load_catalog
from flanmix.compile import compile_mixture
from flanmix.errors import CompileError
from flanmix.mixture import Mixture

from .test_mix import FIXTURE, make_spec


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(FIXTURE)


def _compile(tmp_path, catalog, files: dict[str, bytes | pa.Table]):
    """Compile senti (train) from a folder holding ``files``; its eval split is the test file."""
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        if isinstance(content, pa.Table):
            pq.write_table(content, folder / name)
        else:
            (folder / name).write_bytes(content)
    spec = make_spec(
        clusters=[], tasks=["senti"], holdout={}, cap=1000, total_rows=None,
        sources={"senti": str(folder)},
    )  # fmt: skip
    return compile_mixture(spec, tmp_path / "out", catalog=catalog, workers=1, base_dir=tmp_path)


def _senti(labels, texts=None) -> pa.Table:
    texts = texts or [f"review {i}: {'great' if i % 2 else 'dull'}." for i in range(len(labels))]
    return pa.table({"text": texts, "label": labels})


GOOD_TEST = _senti([0, 1, 0, 1])


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_label_below_minus_one_is_an_error_naming_the_row(tmp_path, catalog, split):
    # -2 indexed answer_choices from the end: a wrong gold answer, silently
    bad = _senti([0, 1, -2, 1])
    files = {"train.parquet": bad, "test.parquet": GOOD_TEST}
    files[f"{split}.parquet"] = bad
    with pytest.raises(CompileError, match=r"row 2 of local:.*: label: label -2 is out of range"):
        _compile(tmp_path, catalog, files)


def test_an_unlabeled_row_is_still_skipped_and_counted(tmp_path, catalog):
    manifest = _compile(
        tmp_path, catalog, {"train.parquet": _senti([0, 1, -1, None]), "test.parquet": GOOD_TEST}
    )
    rows = list(Mixture.open(tmp_path / "out").iter_rows("train", ["source_index"]))
    assert {r["source_index"] for r in rows} == {0, 1}
    assert "unlabeled" in str(manifest["tasks"]["train:senti"])
