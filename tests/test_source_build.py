"""`flanmix sources build`: converters from original release files, on small files in the original
formats written for these tests (tests/fixtures/source_build/)."""

import gzip
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flanmix.catalog import read_task_file
from flanmix.cli import main
from flanmix.errors import SourceError
from flanmix.render import RowPreparer, Skip, compile_task
from flanmix.source_build import BUILDERS, build, default_out
from flanmix.sources import HubState, SourceReader, resolve_source

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "source_build"
TASKS = {p.stem: p for p in (REPO / "task_templates").glob("*/*.yaml")}

# task -> (fixture folder, {split: rows})
EXPECTED_ROWS = {
    "story_cloze": ("story_cloze", {"validation": 2, "test": 1}),
    "newsroom": ("newsroom", {"train": 2, "validation": 1, "test": 1}),
    "opinion_abstracts_idebate": ("opinion_abstracts", {"train": 2, "validation": 1}),
    "opinion_abstracts_rotten_tomatoes": ("opinion_abstracts", {"train": 1, "validation": 1}),
    "math_dataset": ("math_dataset", {"train": 4, "test": 1}),
    "para_crawl_enes": ("para_crawl", {"train": 2}),
    "gigaword": ("gigaword", {"train": 2, "validation": 1, "test": 1}),
    "multi_news": ("multi_news", {"train": 1, "validation": 1, "test": 1}),
    "quac": ("quac", {"train": 1, "validation": 1}),
    "samsum": ("samsum", {"train": 2, "validation": 1, "test": 1}),
    # FLAN v2's chain-of-thought TSVs (flan/v2/cot_data/*_train.tsv): training rows only
    **{
        f"cot_{n}": ("cot", {"train": 2})
        for n in ("creak", "ecqa", "esnli", "sensemaking", "aqua", "qed")
    },
}


def _task(task_id):
    return read_task_file(TASKS[task_id]).task


def _rows(path):
    return pq.read_table(path).to_pylist()


def test_every_builder_is_tested_and_names_its_files():
    assert set(BUILDERS) == set(EXPECTED_ROWS)
    for builder in BUILDERS.values():
        assert builder.files and builder.task in TASKS


@pytest.mark.parametrize("task_id", sorted(EXPECTED_ROWS))
def test_builds_rows_that_fit_the_task_and_render(task_id, tmp_path):
    folder, expected = EXPECTED_ROWS[task_id]
    task = _task(task_id)
    out = tmp_path / "out"
    counts = build(task, FIXTURES / folder, out)
    assert counts == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".flanmix", *(f"{s}.parquet" for s in expected)]
    )
    # the task's own splits resolve from the built folder (the spec's `sources:` route) and render
    prepare, compiled = RowPreparer(task), compile_task(task)
    roles = 0
    for role in ("train", "eval"):
        handle = resolve_source(task, role, base_dir=tmp_path, hub=HubState(True), local_dir=out)
        if handle is None or handle.num_rows == 0:  # no such role, or a slice past the fixture
            continue
        roles += 1
        rows = SourceReader(handle).read(np.arange(handle.num_rows))
        assert rows and set(rows[0]) == set(task.fields)
        rendered = 0
        for row in rows:
            row = prepare(row)
            if isinstance(row, Skip):
                continue
            for ct in compiled:
                if not isinstance(ct.render(row, 0), Skip):
                    rendered += 1
        assert rendered, f"{task_id} {role}: no template rendered a built row"
    assert roles, f"{task_id}: no split of the built folder was read"


def test_local_tasks_read_the_folder_their_builder_writes():
    for task_id in BUILDERS:
        task = _task(task_id)
        if task.source.local is None:  # samsum: hub mirror; the build is the spec-level route
            continue
        out = default_out(task, TASKS[task_id])
        assert out == TASKS[task_id].parent / "data" / task_id
        assert (
            task.source.manual_download
            and f"sources build {task_id}" in task.source.manual_download
        )


def test_story_cloze_fields(tmp_path):
    build(_task("story_cloze"), FIXTURES / "story_cloze", tmp_path / "out")
    first = _rows(tmp_path / "out" / "validation.parquet")[0]
    assert first["story_id"] == "138d5bfb-05cc-41e3-bf2c-fa85ebad14e2"
    assert (
        first["input_sentence_2"] == "He never found good support in family, and turned to gangs."
    )
    assert first["answer_right_ending"] == 1
    assert _rows(tmp_path / "out" / "test.parquet")[0]["answer_right_ending"] == 2


def test_math_dataset_is_text_not_bytes_reprs(tmp_path):
    build(_task("math_dataset"), FIXTURES / "math_dataset", tmp_path / "out")
    train = _rows(tmp_path / "out" / "train.parquet")
    assert train[0] == {"question": "Solve 3*k + 12 = 0 for k.", "answer": "-4"}
    assert [r["answer"] for r in train] == ["-4", "5", "2", "3"]  # easy, medium, hard; one module
    assert _rows(tmp_path / "out" / "test.parquet") == [
        {"question": "Solve 5*q = 35 for q.", "answer": "7"}
    ]


def test_gigaword_replaces_unk_in_train_and_dev_only(tmp_path):
    build(_task("gigaword"), FIXTURES / "gigaword", tmp_path / "out")
    assert _rows(tmp_path / "out" / "train.parquet")[1]["summary"] == "UNK profits rise"
    assert _rows(tmp_path / "out" / "test.parquet")[0]["document"].startswith("UNK shares fell")


def test_multi_news_restores_newlines(tmp_path):
    build(_task("multi_news"), FIXTURES / "multi_news", tmp_path / "out")
    row = _rows(tmp_path / "out" / "validation.parquet")[0]
    assert "NEWLINE_CHAR" not in row["document"] and "\n \n" in row["document"]
    assert "(val)" in row["document"] and row["summary"].startswith("– ")


def test_quac_turn_lists_and_label_ids(tmp_path):
    build(_task("quac"), FIXTURES / "quac", tmp_path / "out")
    row = _rows(tmp_path / "out" / "train.parquet")[0]
    assert row["followups"] == [0, 2, 1] and row["yesnos"] == [2, 2, 0]
    assert row["answers"]["texts"][1] == ["He was created by Tex Avery."] * 2  # stripped
    assert row["orig_answers"]["texts"][2] == "CANNOTANSWER"
    assert row["background"] == "Daffy Duck is a cartoon character."


def test_opinion_abstracts_split_is_seeded_and_keeps_sentence_order(tmp_path):
    task = _task("opinion_abstracts_idebate")
    build(task, FIXTURES / "opinion_abstracts", tmp_path / "a")
    build(task, FIXTURES / "opinion_abstracts", tmp_path / "b")
    a = _rows(tmp_path / "a" / "train.parquet") + _rows(tmp_path / "a" / "validation.parquet")
    b = _rows(tmp_path / "b" / "train.parquet") + _rows(tmp_path / "b" / "validation.parquet")
    assert a == b
    voting = next(r for r in a if "voting" in r["topic"])
    assert voting["arguments"][0] == "Low turnout skews who is represented."
    assert len(voting["arguments"]) == 3


def test_release_archives_and_gzip_are_read_as_they_come(tmp_path):
    # the opinion abstracts corpus as its zip, newsroom as .jsonl.gz, math as the tar.gz
    with zipfile.ZipFile(tmp_path / "opinion_abstracts.zip", "w") as z:
        for f in (FIXTURES / "opinion_abstracts" / "opinion_abstracts").iterdir():
            z.write(f, f"opinion_abstracts/{f.name}")
    counts = build(
        _task("opinion_abstracts_rotten_tomatoes"),
        tmp_path / "opinion_abstracts.zip",
        tmp_path / "oa",
    )
    assert counts == {"train": 1, "validation": 1}

    news = tmp_path / "news"
    news.mkdir()
    for f in (FIXTURES / "newsroom").iterdir():
        (news / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    assert build(_task("newsroom"), news, tmp_path / "nr")["train"] == 2

    with tarfile.open(tmp_path / "mathematics_dataset-v1.0.tar.gz", "w:gz") as t:
        t.add(FIXTURES / "math_dataset" / "mathematics_dataset-v1.0", "mathematics_dataset-v1.0")
    assert build(
        _task("math_dataset"), tmp_path / "mathematics_dataset-v1.0.tar.gz", tmp_path / "m"
    ) == {
        "train": 4,
        "test": 1,
    }


def test_missing_release_file_names_it(tmp_path):
    with pytest.raises(SourceError, match="train_v0.2.json"):
        build(_task("quac"), FIXTURES / "samsum", tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_bad_row_writes_nothing(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "story_cloze", src)
    test_csv = src / "cloze_test_test__spring2016 - cloze_test_ALL_test.csv"
    test_csv.write_text(test_csv.read_text() + "x,only,four,columns\n")
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="expected 8 columns"):
        build(_task("story_cloze"), src, out)
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("answer", ["0", "3", "-1", ""])
def test_story_cloze_answer_must_be_1_or_2(tmp_path, answer):
    # the templates index the endings by answer - 1: a 0 read as ending 2
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "story_cloze", src)
    val = src / "cloze_test_val__spring2016 - cloze_test_ALL_val.csv"
    lines = val.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + "," + answer
    val.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=r"ALL_val.csv line 3: AnswerRightEnding is .*1 or 2"):
        build(_task("story_cloze"), src, tmp_path / "out")


def test_existing_outputs_need_overwrite(tmp_path):
    task = _task("para_crawl_enes")
    out = tmp_path / "out"
    build(task, FIXTURES / "para_crawl", out)
    with pytest.raises(SourceError, match="already exists"):
        build(task, FIXTURES / "para_crawl", out)
    (out / "mine.parquet").write_bytes(b"not the build's")  # inside a folder flanmix made
    with pytest.raises(SourceError, match=r"holds files flanmix did not write \(mine.parquet\)"):
        build(task, FIXTURES / "para_crawl", out, overwrite=True)
    assert (out / "mine.parquet").read_bytes() == b"not the build's"
    (out / "mine.parquet").unlink()
    assert build(task, FIXTURES / "para_crawl", out, overwrite=True) == {"train": 2}
    assert sorted(p.name for p in out.iterdir()) == [".flanmix", "train.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock, no temporary folder


def test_overwrite_never_replaces_a_folder_flanmix_did_not_make(tmp_path, capsys):
    """OUT goes through the output guard: other people's folders, the release being read and the
    task library are never replaced, --overwrite or not."""
    task = _task("para_crawl_enes")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    (mine / "train.parquet").write_bytes(b"not ours")
    for overwrite in (False, True):
        with pytest.raises(SourceError, match="not a folder flanmix made"):
            build(task, FIXTURES / "para_crawl", mine, overwrite=overwrite)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "train.parquet"]
    assert (mine / "train.parquet").read_bytes() == b"not ours"
    # the release itself inside OUT: never replaced
    release = tmp_path / "data"
    shutil.copytree(FIXTURES / "para_crawl", release / "release")
    with pytest.raises(SourceError, match="it would replace"):
        build(task, release / "release", release, overwrite=True)
    assert (release / "release").is_dir()
    # an existing empty folder needs --overwrite (it holds nothing to lose), then it is filled
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="already exists"):
        build(task, FIXTURES / "para_crawl", empty)
    assert build(task, FIXTURES / "para_crawl", empty, overwrite=True) == {"train": 2}
    # from the command line: one line naming the folder; the task library is protected too
    args = ["sources", "build", "para_crawl_enes", "--from", str(FIXTURES / "para_crawl")]
    assert main([*args, "-o", str(mine), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"{mine}: refusing to replace" in err and "Traceback" not in err
    assert main([*args, "-o", str(REPO), "--overwrite"]) == 2
    assert "it would replace" in capsys.readouterr().err


def test_a_folder_an_unmarked_earlier_build_wrote_may_be_replaced(tmp_path):
    """Builds made before the .flanmix marker: a folder holding only this build's
    <split>.parquet files counts as one (with --overwrite)."""
    task = _task("story_cloze")
    out = tmp_path / "out"
    out.mkdir()
    (out / "validation.parquet").write_bytes(b"old")
    (out / "test.parquet").write_bytes(b"old")
    with pytest.raises(SourceError, match="already exists"):
        build(task, FIXTURES / "story_cloze", out)
    assert build(task, FIXTURES / "story_cloze", out, overwrite=True) == {
        "validation": 2,
        "test": 1,
    }
    assert (out / ".flanmix").is_file() and _rows(out / "test.parquet")


def test_hub_task_has_no_converter(tmp_path):
    with pytest.raises(SourceError, match="no `sources build` converter for rte"):
        build(_task("rte"), FIXTURES, tmp_path)


def test_cli(tmp_path, capsys):
    out = tmp_path / "sc"
    assert (
        main(
            [
                "sources",
                "build",
                "story_cloze",
                "--from",
                str(FIXTURES / "story_cloze"),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert "validation.parquet: 2 rows" in capsys.readouterr().out
    assert main(["sources", "build", "story_cloze"]) == 2
    err = capsys.readouterr().err
    assert "--from is required" in err and "cloze_test_val__spring2016" in err
    assert main(["sources", "build", "rte", "--from", str(FIXTURES)]) == 2
    assert "on the hub (nyu-mll/glue)" in capsys.readouterr().err


def test_missing_local_files_hint_at_the_build(tmp_path):
    task = _task("opinion_abstracts_idebate")
    with pytest.raises(SourceError) as info:
        resolve_source(task, "train", base_dir=tmp_path, hub=HubState(False))
    assert "flanmix sources build opinion_abstracts_idebate --from DIR" in str(info.value)


def test_cot_tsv_restores_line_breaks_and_refuses_a_short_line(tmp_path):
    rows = _rows(
        build(_task("cot_aqua"), FIXTURES / "cot", tmp_path / "aqua")
        and tmp_path / "aqua" / "train.parquet"
    )
    assert rows[1] == {
        "question": "If 3x = 12, what is x?\nOptions:\n(A) 2\n(B) 3\n(C) 4\n(D) 5\n(E) 6",
        "answer": "(C)",
        "rationale": "x = 12 / 3\nx = 4",
    }
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "qed_train.tsv").write_text("a question\tits answer\n")
    with pytest.raises(SourceError, match="line 1: 2 tab-separated columns, expected 3"):
        build(_task("cot_qed"), bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


STORY_VAL = "cloze_test_val__spring2016 - cloze_test_ALL_val.csv"


def _story_cloze_with(tmp_path, change) -> Path:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "story_cloze", src)
    val = src / STORY_VAL
    val.write_bytes(change(val.read_bytes()))
    return src


def _last_answer(value: bytes):
    def change(data: bytes) -> bytes:
        lines = data.splitlines()
        lines[2] = lines[2].rsplit(b",", 1)[0] + b"," + value
        return b"\n".join(lines) + b"\n"

    return change


STORY_CLOZE_BREAKS = {
    "answer 'one'": (_last_answer(b"one"), "ALL_val.csv line 3: AnswerRightEnding is 'one'"),
    "answer empty": (_last_answer(b""), "ALL_val.csv line 3: AnswerRightEnding is ''"),
    "latin-1 byte": (lambda d: d.replace(b"a", b"\xe9", 1), "ALL_val.csv: not UTF-8 text (byte 0xe9 at offset {at})"),
    "random bytes": (lambda d: b"ok\xff\xfe\x00\x81" * 50, "ALL_val.csv: not UTF-8 text (byte 0xff at offset 2)"),
    "empty file": (lambda d: b"", "ALL_val.csv: no rows (an empty file, or a header alone)"),
    "header only": (lambda d: d.splitlines(keepends=True)[0], "ALL_val.csv: no rows"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(STORY_CLOZE_BREAKS))
def test_a_broken_story_cloze_csv_is_one_line_naming_the_file(tmp_path, capsys, case):
    change, expected = STORY_CLOZE_BREAKS[case]
    src = _story_cloze_with(tmp_path, change)
    at = (FIXTURES / "story_cloze" / STORY_VAL).read_bytes().index(b"a")
    out = tmp_path / "out"
    assert main(["sources", "build", "story_cloze", "--from", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) <= 2, err
    assert str(src / STORY_VAL) in err.splitlines()[0]
    assert expected.format(at=at) in err.splitlines()[0], err
    assert not out.exists()


def test_a_bad_byte_deep_in_a_streamed_file_is_located_by_its_offset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = b"".join(f"h\xc3\xa9llo {i}\thol\xc3\xa1 {i}\n".encode("latin-1") for i in range(5000))
    at = len(data) - 1000
    (src / "en-es.txt").write_bytes(data[:at] + b"\xff" + data[at:])
    with pytest.raises(
        SourceError, match=rf"en-es.txt: not UTF-8 text \(byte 0xff at offset {at}\)"
    ):
        build(_task("para_crawl_enes"), src, tmp_path / "out")


def _write_json(text: str):
    return lambda folder: folder.joinpath("train.json").write_text(text)


OTHER_BREAKS = {  # task, fixture, change to a copy of the fixture, the message
    "samsum missing key": ("samsum", "samsum", _write_json('[{"id": 1}]'), "train.json: dialogue 0: no 'dialogue'"),
    "samsum not a list": ("samsum", "samsum", _write_json('{"a": 1}'), "train.json: expected a JSON list of dialogues"),
    "samsum not JSON": ("samsum", "samsum", _write_json("[] x"), "train.json:1: not JSON: Extra data"),
    "samsum empty": ("samsum", "samsum", _write_json("[]"), "train.json: no rows"),
    "quac missing key": ("quac", "quac", lambda f: f.joinpath("train_v0.2.json").write_text('{"data": [{"paragraphs": [{"id": 1}]}]}'), "train_v0.2.json: section 0: no 'qas'"),
    "newsroom bad line": ("newsroom", "newsroom", lambda f: f.joinpath("dev.jsonl").write_text('{"text": "a"}\n'), "dev.jsonl:1: no 'summary'"),
    "newsroom not JSON": ("newsroom", "newsroom", lambda f: f.joinpath("dev.jsonl").write_text("\nnope\n"), "dev.jsonl:2: not JSON"),
    "cot empty": ("cot_creak", "cot", lambda f: f.joinpath("creak_train.tsv").write_text(""), "creak_train.tsv: no rows"),
    "gigaword empty": ("gigaword", "gigaword", lambda f: [f.joinpath(f"org_data/dev.{s}.txt").write_text("") for s in ("src", "tgt")], "dev.src.txt: no rows"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OTHER_BREAKS))
def test_other_converters_refuse_broken_files_in_one_line(tmp_path, case):
    task, fixture, change, expected = OTHER_BREAKS[case]
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / fixture, src)
    change(src)
    with pytest.raises(SourceError) as info:
        build(_task(task), src, tmp_path / "out")
    assert expected in str(info.value) and str(src) in str(info.value), str(info.value)
    assert not (tmp_path / "out").exists()
