"""Hostile source rows: labels below -1, nulls, wrong types and broken files in a spec's local
``sources`` folder are errors naming the file and row, or skips with a counted reason; never a
wrong gold answer or the text "None" in a rendered row."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanmix.catalog import load_catalog
from flanmix.compile import compile_mixture
from flanmix.errors import CompileError, FlanmixError, PreflightError
from flanmix.mixture import Mixture

from .test_mix import FIXTURE, make_spec


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(FIXTURE)


def _compile(tmp_path, catalog, files: dict[str, bytes | pa.Table], held_out=False):
    """Compile senti from a folder holding ``files``: its train file, or (``held_out``) its test
    file as eval rows beside another task's samples."""
    folder = tmp_path / "src"
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, pa.Table):
            pq.write_table(content, folder / name)
        else:
            (folder / name).write_bytes(content)
    spec = make_spec(
        clusters=[], tasks=["senti", "same"] if held_out else ["senti"], cap=1000,
        holdout={"tasks": ["senti"]} if held_out else {}, total_rows=None,
        sources={"senti": str(folder)},
    )  # fmt: skip
    out = tmp_path / ("out_eval" if held_out else "out")
    return compile_mixture(spec, out, catalog=catalog, workers=1, base_dir=tmp_path, offline=True)


def _senti(labels, texts=None) -> pa.Table:
    texts = texts or [f"review {i}: {'great' if i % 2 else 'dull'}." for i in range(len(labels))]
    return pa.table({"text": texts, "label": labels})


GOOD_TEST = _senti([0, 1, 0, 1])


@pytest.mark.parametrize("held_out", [False, True])
def test_a_label_below_minus_one_is_an_error_naming_the_row(tmp_path, catalog, held_out):
    # -2 indexed answer_choices from the end: a wrong gold answer, silently
    bad = _senti([0, 1, -2, 1])
    split = "test" if held_out else "train"
    with pytest.raises(CompileError, match=rf"{split} row 2 of local:.*: label -2 is out of range"):
        _compile(tmp_path, catalog, {f"{split}.parquet": bad}, held_out)


def test_an_unlabeled_row_is_still_skipped_and_counted(tmp_path, catalog):
    manifest = _compile(
        tmp_path, catalog, {"train.parquet": _senti([0, 1, -1, None]), "test.parquet": GOOD_TEST}
    )
    rows = list(Mixture.open(tmp_path / "out").iter_rows("train", ["source_index"]))
    assert {r["source_index"] for r in rows} == {0, 1}
    assert "unlabeled" in str(manifest["tasks"]["train:senti"])


def test_a_null_text_is_skipped_with_its_reason_never_rendered_as_none(tmp_path, catalog):
    texts = ["review 0: dull.", None, "review 2: dull.", "review 3: great."]
    table = _senti([0, 1, 0, 1], texts)
    train = _compile(tmp_path, catalog, {"train.parquet": table})
    held = _compile(tmp_path, catalog, {"test.parquet": table}, held_out=True)
    for out, split in (("out", "train"), ("out_eval", "eval")):
        rows = Mixture.open(tmp_path / out).iter_rows(split, ["inputs", "targets", "source_index"])
        rows = [r for r in rows if r["source_index"] is not None]
        assert rows and all("None" not in r["inputs"] + r["targets"] for r in rows), rows
        assert 1 not in {r["source_index"] for r in rows}
    assert train["redrawn"]["train"]["senti"] > 0  # train draws of row 1 went to other rows
    assert "null text" in held["dropped"]["eval"]


def test_a_field_the_template_tests_itself_may_be_null():
    from flanmix.render import Rendered, compile_template
    from flanmix.schema import Template

    guarded = Template(
        id="t",
        input="{% if title %}{{ title }}: {% endif %}{{ text }}",
        target="{{ note | default('none') }}",
    )
    ct = compile_template("toy", guarded)
    assert ct.render({"title": None, "text": "body", "note": "n"}) == Rendered("body", "n", None)
    assert ct.render({"title": "T", "text": None, "note": "n"}).reason == "null text"


JSONL = b"".join(b'{"text": "review %d: dull.", "label": 0}\n' % i for i in range(10))


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        # a wrong column name blamed the template ("'text' is undefined")
        ("train.jsonl", JSONL.replace(b'"text"', b'"txt"'),
         r"field 'text' is not in the real features \(the types read from .*train.jsonl\).*"
         r"did you mean 'txt'"),
        # a mapping rendered as "{'t': 'x'}"
        ("train.jsonl", b'{"text": {"t": "x"}, "label": 0}\n', r"text: declared string, real struct"),
        # a text label: "'list object' has no attribute 'positive'"
        ("train.csv", b"text,label\ngreat,positive\n", r"label: declared class_label, real string"),
        # bytes rendered as "b'\\xff\\xfe bad'"
        ("train.parquet", pa.table({"text": pa.array([b"\xff\xfe bad"]), "label": [0]}),
         r"text: declared string, real binary"),
        # parse errors said only "An error occurred while generating the dataset"
        ("train.jsonl", JSONL + b'{"text": "x", "label": \n',
         r"cannot load .*train.jsonl: ArrowInvalid: JSON parse error: .* in row 10"),
        ("train.csv", b"text,label\na,0\nb,1,2,3\n",
         r"cannot load .*train.csv: ParserError: .*Expected 2 fields in line 3, saw 4"),
        ("train.csv", b"text,label\n\xff\xfe,0\n", r"cannot load .*train.csv: UnicodeDecodeError"),
        ("train.jsonl", b"", r"cannot load .*train.jsonl: the file has no rows"),
    ],
)  # fmt: skip
def test_the_preflight_names_the_file_and_what_is_wrong_in_it(
    tmp_path, catalog, name, content, expected
):
    with pytest.raises(PreflightError) as info:
        _compile(tmp_path, catalog, {name: content})
    text = str(info.value)
    assert re.search(expected, text, re.S), text
    assert "DatasetGenerationError" not in text and "StopIteration" not in text
    assert not (tmp_path / "out").exists()


def test_a_good_jsonl_source_passes_the_preflight(tmp_path, catalog):
    manifest = _compile(tmp_path, catalog, {"train.jsonl": JSONL})
    assert manifest["splits"]["train"]["rows"] > 0


def test_empty_csv_cells_are_nulls_never_the_text_none(tmp_path, catalog):
    csv = b"text,label\nreview 0: dull.,0\n,1\nreview 2: great.,1\n"
    manifest = _compile(tmp_path, catalog, {"train.csv": csv})
    rows = list(Mixture.open(tmp_path / "out").iter_rows("train", ["inputs", "source_index"]))
    assert rows and all("None" not in r["inputs"] and "nan" not in r["inputs"] for r in rows)
    assert 1 not in {r["source_index"] for r in rows}
    assert manifest["redrawn"]["train"]["senti"] > 0
    # a column of empty cells (read as float by pandas) is null, not a type error: every row skips
    with pytest.raises(FlanmixError, match=r"(?s)every training row was skipped.*null text"):
        _compile(tmp_path / "all", catalog, {"train.csv": b"text,label\n,0\n,1\n"})


def test_a_held_out_task_whose_rows_are_all_dropped_is_said(tmp_path, catalog):
    """Every eval row unlabeled gave 'eval 0 rows' with no word about the task."""
    from flanmix.report import composition_report

    _compile(tmp_path, catalog, {"test.parquet": _senti([-1, -1, -1, -1])}, held_out=True)
    report = composition_report(tmp_path / "out_eval")
    assert re.search(r"no eval rows from senti: all \d+ planned rows were dropped", report)
