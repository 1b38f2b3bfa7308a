"""Natural Instructions (NIv2): streaming reader, import, lint, compile, round trip (flanmix.niv2).

Every NIv2 file here is written by the tests (tests/niv2_data.py), in the shapes of the real
releases: current files, older ones (Definition as a string, no ids, no language keys, NaN in
URL), multi-output instances, non-English, MMLU-range, malformed and huge files.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flanmix import niv2
from flanmix.catalog import load_catalog
from flanmix.cli import main
from flanmix.compile import compile_mixture
from flanmix.errors import FlanmixError
from flanmix.lint import lint_paths
from flanmix.niv2 import (
    NIv2Error,
    TaskStream,
    count_instances,
    import_natural_instructions,
    read_rows,
)

from .niv2_data import SENTENCES, TEST_CATEGORIES, TRAIN, task, write_tree

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "mixtures" / "niv2.yaml"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("niv2"))


@pytest.fixture(scope="module")
def imported(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imp") / "niv2_tasks"
    import_natural_instructions([tree / "tasks"], out)
    return out


def _write(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = doc if isinstance(doc, str) else json.dumps(doc, indent=2)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the stream


def test_stream_reads_current_release_shape(tree):
    path = tree / "tasks" / "task020_fixture_answer_generation.json"
    with TaskStream(path) as s:
        head = s.header()
        rows = list(s.instances())
    assert head.definition.startswith("Answer the question about the sentence")
    assert head.categories == ["Answer Generation", "Question Answering"]
    assert head.english() is True
    assert [e["output"] for e in head.positive_examples] == ["Ana", "at nine"]
    assert rows[0] == {
        "id": "task020_fixture_answer_generation-0000",
        "input": "Sentence: The kettle clicked off as the water reached a boil. Question: What is mentioned?",
        "output": ["kettle", "the kettle", "a kettle"],  # every output kept
    }
    assert len(rows) == len(SENTENCES)


def test_stream_reads_older_release_shape(tree):
    path = tree / "tasks" / "task050_fixture_sentiment_old_format.json"
    text = path.read_text()
    assert "NaN" in text and '"Instance License"' in text.split('"Instances"')[1]
    with TaskStream(path) as s:
        head = s.header()
        rows = list(s.instances())
    assert (
        head.definition == "Decide whether the review is positive or negative. Answer POS or NEG."
    )
    assert head.url == []  # [NaN] is no URL
    assert head.input_language is None and head.english() is None
    assert rows[1] == {
        "id": "task050_fixture_sentiment_old_format-1",  # no ids: file name and index
        "input": "A wonderful little bookshop.",
        "output": ["POS"],
    }


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_stream_across_chunk_boundaries(tree, monkeypatch, chunk):
    """Values cut anywhere by the buffer's end (strings, numbers, NaN, keys) read the same."""
    monkeypatch.setattr(niv2, "CHUNK", chunk)
    for path in sorted((tree / "tasks").glob("*.json"))[:4]:
        expected = json.loads(path.read_text())
        with TaskStream(path) as s:
            s.header()
            got = [r["input"] for r in s.instances()]
        assert got == [i["input"] for i in expected["Instances"]]


def test_instances_before_definition(tmp_path):
    doc = {
        "Instances": [{"input": "a", "output": ["b"]}],
        "Definition": ["Do it."],
        "Categories": [],
    }
    path = _write(tmp_path / "task9_late.json", doc)
    rows = read_rows(path, [0])
    assert rows[0]["definition"] == "Do it." and rows[0]["output"] == ["b"]


def test_read_rows_picks_sorted_indices_and_carries_the_header(tree):
    path = tree / "tasks" / "task001_fixture_question_generation.json"
    rows = read_rows(path, [1, 4])
    assert [r["id"] for r in rows] == [
        "task001_fixture_question_generation-0001",
        "task001_fixture_question_generation-0004",
    ]
    assert rows[0]["definition"].startswith("You get a short sentence")
    assert rows[0]["positive_examples"][0]["output"] == "Where did the cat sleep?"
    with pytest.raises(NIv2Error, match="asked for instance 99"):
        read_rows(path, [99])


def test_instance_reader_reads_on_for_later_indices_and_starts_again_for_earlier(
    tmp_path, monkeypatch
):
    import flanmix.niv2 as niv2

    path = _huge(tmp_path / "task8_many.json", 300)
    reads = [[0, 1, 1], [2, 50], [51], [120, 299], [7], [8, 9]]
    expected = [read_rows(path, wanted) for wanted in reads]  # fresh one-pass reads
    opened = []
    monkeypatch.setattr(niv2, "TaskStream", lambda p: opened.append(p) or TaskStream(p))
    reader = niv2.InstanceReader(path)
    assert [reader.read(wanted) for wanted in reads] == expected
    assert len(opened) == 2  # read on from one pass; started again once, for [7]
    with pytest.raises(NIv2Error, match="asked for instance 300 but the file has 300"):
        reader.read([10, 300])
    assert reader.read([0]) == read_rows(path, [0])  # starts again after the error
    reader.close()
    reader.close()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("content", "message", "row"),
    [
        ("[1, 2]", "expected a JSON object", None),
        (
            '{"Definition": ["x"], "Instances": [{"input": "a", "output": ["b"]} {"input": "c"}]}',
            "',' or ']'",
            1,
        ),
        (
            '{"Definition": ["x"], "Instances": [{"input": "a", "output": []}]}',
            "instance 0 has no output",
            0,
        ),
        (
            '{"Definition": ["x"], "Instances": [{"input": "a", "output": ["b"]}, {"output": ["c"]}]}',
            "instance 1 has no 'input'",
            1,
        ),
        (
            '{"Definition": ["x"], "Instances": [{"input": "a", "output": [3]}]}',
            "list of strings",
            0,
        ),
        ('{"Definition": ["x"]}', "no 'Instances'", None),
        ('{"Instances": []}', "no 'Definition'", None),
        (
            '{"Definition": ["x"], "Instances": [{"input": "a", "output": ["b"]}',
            "end of the file",
            1,
        ),
        (
            '{"Definition": "x", "Instances": [{"input": "a\x01", "output": ["b"]}]}',
            "not valid JSON",
            0,
        ),
    ],
)
def test_bad_files_are_located_errors(tmp_path, content, message, row):
    path = _write(tmp_path / "task1_bad.json", content)
    with pytest.raises(NIv2Error, match=message) as info:
        count_instances(path)
    loc = info.value.location
    assert loc.file == str(path) and loc.line == 1 and loc.row == row


@pytest.mark.parametrize(
    "content, message, row",
    [
        (
            '{"Definition": ["x"], "Reasoning": '
            + "[" * 100000
            + "]" * 100000
            + ', "Instances": []}',
            "the value of 'Reasoning' is nested too deep",
            None,
        ),
        (
            '{"Definition": ["x"], "Instances": [{"input": "a", "output": ["b"]}, '
            + "[" * 100000
            + "]" * 100000
            + "]}",
            "instance 1 is nested too deep",
            1,
        ),
    ],
)
def test_deep_nesting_is_a_located_error_not_a_recursion_error(tmp_path, content, message, row):
    path = _write(tmp_path / "task1_deep.json", content)
    for read in (count_instances, lambda p: read_rows(p, [0, 1])):
        with pytest.raises(NIv2Error, match=message) as info:
            read(path)
        loc = info.value.location
        assert loc.file == str(path) and loc.line == 1 and loc.row == row


def test_import_of_a_deeply_nested_file_is_one_line(tree, tmp_path, capsys):
    doc = json.loads((tree / "tasks/task001_fixture_question_generation.json").read_text())
    doc["Reasoning"] = ["placeholder"]
    text = json.dumps(doc).replace('["placeholder"]', "[" * 100000 + "]" * 100000)
    path = _write(tmp_path / "tasks/task900_x.json", text)
    assert (
        main(["import", "natural-instructions", str(path.parent), "-o", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(f"flanmix import: error: {path}:1: the value of 'Reasoning' is nested")
    assert not (tmp_path / "o").exists()


def test_error_line_is_the_instance_line(tmp_path):
    doc = task("Do it.", ["Misc."], [], [("a", "b"), ("c", "d"), ("e", "f")])
    doc["Instances"][2]["output"] = []
    text = json.dumps(doc, indent=4)
    path = _write(tmp_path / "task2_bad.json", text)
    with pytest.raises(NIv2Error) as info:
        count_instances(path)
    line = text.splitlines()[info.value.location.line - 1]
    assert line.strip() == "{" and info.value.location.row == 2
    assert str(info.value).startswith(
        f"{path}:{info.value.location.line} row=2: instance 2 has no output"
    )


def test_import_of_a_bad_file_writes_nothing(tree, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for f in (tree / "tasks").glob("task0*.json"):
        (tasks / f.name).write_bytes(f.read_bytes())
    _write(tasks / "task400_broken.json", '{"Definition": ["x"], "Instances": [{"input": "a"}]}')
    out = tmp_path / "out"
    code = main(["import", "natural-instructions", str(tasks), "-o", str(out)])
    assert code == 2
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [tasks]  # no staging folder left behind


def test_bad_input_is_one_line_cli_error(tmp_path, capsys):
    path = _write(tmp_path / "task5_x.json", "not json at all")
    assert main(["import", "natural-instructions", str(path), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flanmix import: error: {path}:1: expected a JSON object")
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- import


def test_import_filters_and_splits(imported):
    report = json.loads((imported / niv2.MARKER).read_text())
    assert report["imported"] == 4 + len(TEST_CATEGORIES)
    assert report["splits"] == {"test": 12, "train": 4}
    assert report["skipped_tasks"] == {
        "task100_fixture_translation_en_de": "listed in splits/default/excluded_tasks.txt",
        "task690_fixture_mmmlu_answer_generation": "MMLU-derived (FLAN v2 keeps MMLU for evaluation)",
    }
    cat = load_catalog(imported)
    assert sorted(cat.tasks) == sorted(
        [*TRAIN, *[n for n in (p.stem for p in imported.rglob("task3*.yaml"))]]
    )
    t = cat.task("task050_fixture_sentiment_old_format")
    assert t.cluster == "sentiment_analysis"
    meta = t.metadata["niv2"]
    assert meta["split"] == "train" and meta["categories"] == ["Sentiment Analysis"]
    assert meta["input_language"] is None and meta["domains"] == ["Fiction"]
    q = cat.task("task001_fixture_question_generation").metadata["niv2"]
    assert q["negative_examples"][0]["output"] == "Is it raining?"
    assert q["input_language"] == ["English"]
    assert cat.task("task300_fixture_textual_entailment").metadata["niv2"]["split"] == "test"
    src = t.source.niv2
    assert src.instances == 6 and not Path(src.file).is_absolute()
    assert (cat.task_file(t.id).path.parent / src.file).resolve().is_file()
    assert len(t.templates) == 10 and len(t.samples) == 5


def test_non_english_kept_on_request(tree, tmp_path):
    out = tmp_path / "all"
    path = tree / "tasks" / "task100_fixture_translation_en_de.json"
    report = import_natural_instructions([path], out, splits=tmp_path)  # no split lists here
    assert report.skipped == {"not English (Input_language/Output_language)": 1}
    assert not report.tasks and (out / niv2.MARKER).is_file()
    report = import_natural_instructions(
        [path], out, splits=tmp_path, all_languages=True, overwrite=True
    )
    assert [t.split for t in report.tasks] == ["unlisted"]
    assert report.tasks[0].cluster == "translation"
    report = import_natural_instructions([path], out, all_languages=True, overwrite=True)
    assert report.skipped_tasks == {  # splits/default found beside tasks/
        "task100_fixture_translation_en_de": "listed in splits/default/excluded_tasks.txt"
    }


def test_tables_are_data(tree, tmp_path):
    cats = _write(
        tmp_path / "cats.yaml",
        "categories:\n  Textual Entailment: nli\n  Sentiment Analysis: nli\n",
    )
    excl = _write(
        tmp_path / "ex.yaml",
        "excluded:\n  - tasks: [task120_fixture_summarization]\n    reason: mine\n",
    )
    out = tmp_path / "o"
    report = import_natural_instructions([tree / "tasks"], out, categories=cats, excluded=excl)
    assert report.skipped_tasks["task120_fixture_summarization"] == "mine"
    assert "task690_fixture_mmmlu_answer_generation" not in report.skipped_tasks  # not excluded now
    assert report.mixed_clusters == {"nli": ["task300_fixture_textual_entailment"]}
    bad = _write(tmp_path / "bad.yaml", "categories:\n  Textual Entailment: Not An Id\n")
    with pytest.raises(FlanmixError, match="not a cluster id"):
        import_natural_instructions([tree / "tasks"], tmp_path / "o2", categories=bad)


def test_test_split_task_follows_its_test_category(tree, tmp_path):
    """A test-split task listed first under a training category goes to its test category's
    cluster, so mixtures/niv2.yaml's holdout holds it out."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for f in (tree / "tasks").glob("task*.json"):
        (tasks / f.name).write_bytes(f.read_bytes())
    doc = task(
        "Answer whether the second sentence follows.",
        ["Answer Generation", "Textual Entailment"],
        [("A / B", "yes", "It follows.")],
        [(f"{s} / Something happened.", "yes") for s, _ in SENTENCES],
    )
    _write(tasks / "task399_fixture_two_categories.json", doc)
    splits = tmp_path / "splits"
    shutil.copytree(tree / "splits" / "default", splits)
    with (splits / "test_tasks.txt").open("a") as f:
        f.write("task399_fixture_two_categories\n")
    out = tmp_path / "o"
    report = import_natural_instructions([tasks], out, splits=splits)
    assert report.mixed_clusters == {}
    cat = load_catalog(out)
    assert cat.task("task399_fixture_two_categories").cluster == "textual_entailment"
    assert "task399_fixture_two_categories" in cat.tasks_in_cluster("textual_entailment")
    assert (
        out / "task_templates" / "textual_entailment" / "task399_fixture_two_categories.yaml"
    ).is_file()
    result = lint_paths([out / "task_templates"], clusters=out / "clusters.yaml")
    assert [str(f) for f in result.findings if f.severity != "info"] == []


def test_out_folder_rules(tree, tmp_path):
    one = tree / "tasks" / "task001_fixture_question_generation.json"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FlanmixError, match="not a folder flanmix imported"):
        import_natural_instructions([one], mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "imp"
    import_natural_instructions([one], out)
    with pytest.raises(FlanmixError, match="--overwrite"):
        import_natural_instructions([one], out)
    import_natural_instructions([one], out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imp", "mine"]
    (out / "task_templates" / "my_task.yaml").write_text("id: mine\n")  # added by a user
    with pytest.raises(FlanmixError, match=r"did not write \(task_templates/my_task.yaml\)"):
        import_natural_instructions([one], out, overwrite=True)
    assert (out / "task_templates" / "my_task.yaml").read_text() == "id: mine\n"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FlanmixError, match="is a file"):  # OUT's folder: one line, no traceback
        import_natural_instructions([one], tmp_path / "afile" / "imp")


def test_committed_import_is_current(tmp_path):
    """tests/fixtures/niv2_tasks (mixtures/niv2.yaml's catalog) is what the import writes today;
    regenerate it with `flanmix import natural-instructions tests/fixtures/niv2/tasks -o
    tests/fixtures/niv2_tasks --overwrite` when the importer changes."""
    fixtures = ROOT / "tests" / "fixtures"
    out = fixtures / f".niv2_tasks_check_{tmp_path.name}"  # beside it: same relative paths
    try:
        import_natural_instructions([fixtures / "niv2" / "tasks"], out)
        names = sorted(p.relative_to(out) for p in out.rglob("*.yaml"))
        committed = fixtures / "niv2_tasks"
        assert names == sorted(p.relative_to(committed) for p in committed.rglob("*.yaml"))
        for name in names:
            assert (out / name).read_text() == (committed / name).read_text(), name
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_lint_of_imported_tree_is_clean(imported):
    result = lint_paths([imported / "task_templates"], clusters=imported / "clusters.yaml")
    assert [str(f) for f in result.findings if f.severity != "info"] == []
    assert result.tasks == 4 + len(TEST_CATEGORIES)


def test_source_recounts_a_changed_file(imported, tmp_path):
    from flanmix.sources import HubState, resolve_source

    cat = load_catalog(imported)
    tf = cat.task_file("task001_fixture_question_generation")
    h = resolve_source(tf.task, "train", base_dir=tf.path.parent, hub=HubState(offline=True))
    assert h.kind == "niv2" and h.num_rows == len(SENTENCES)
    tf.task.source.niv2.bytes = 1  # as if the file had changed since the import
    tf.task.source.niv2.instances = 999
    h = resolve_source(tf.task, "train", base_dir=tf.path.parent, hub=HubState(offline=True))
    assert h.num_rows == len(SENTENCES)


# ----------------------------------------------------------------------------- compile


@pytest.fixture(scope="module")
def compiled(imported, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mix") / "niv2"
    compile_mixture(SPEC, out, catalog=load_catalog(imported), workers=1)
    return out


def _rows(out: Path, split: str) -> list[dict]:
    return [r for f in sorted(out.glob(f"{split}-*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_shipped_spec_compiles_its_fixture_catalog(tmp_path):
    manifest = compile_mixture(SPEC, tmp_path / "out", workers=1)
    assert manifest["splits"]["train"]["rows"] > 0 and manifest["splits"]["eval"]["rows"] > 0


def test_niv2_mixture_compiles_with_test_split_held_out(compiled):
    manifest = json.loads((compiled / "manifest.json").read_text())
    train, evals = _rows(compiled, "train"), _rows(compiled, "eval")
    assert {r["task"] for r in train} == set(TRAIN) - {"task100_fixture_translation_en_de"} - {
        "task690_fixture_mmmlu_answer_generation"
    }
    assert {r["task"].split("_fixture_")[0] for r in evals} == {f"task{300 + i}" for i in range(12)}
    assert manifest["splits"]["train"]["rows"] == len(train)
    # 10 templates per test task on each of its 6 instances
    assert len(evals) == 12 * 10 * len(SENTENCES)
    templates = {r["template_id"].split(".")[1] for r in train}
    assert len(templates) == 10  # zero-shot and in-context templates both drawn


def test_multi_output_instances_keep_every_reference(compiled):
    evals = [r for r in _rows(compiled, "eval") if r["task"] == "task309_fixture_title_generation"]
    for r in evals:
        assert r["references"][0] == r["targets"]
        assert len(r["references"]) == 2 and r["references"][1].startswith("A ")


def test_round_trip_definitions_and_examples_into_rows(compiled, tree):
    docs = {p.stem: json.loads(p.read_text()) for p in (tree / "tasks").glob("*.json")}
    by_input = {}
    for name, doc in docs.items():
        for inst in doc["Instances"]:
            by_input.setdefault((name, inst["input"]), inst["output"])
    for r in _rows(compiled, "train") + _rows(compiled, "eval"):
        doc = docs[r["task"]]
        template = r["template_id"].split(".")[1]
        definition = (
            doc["Definition"] if isinstance(doc["Definition"], str) else doc["Definition"][0]
        )
        example = doc["Positive Examples"][0]
        if template != "input_only":
            assert definition in r["inputs"], (r["template_id"], r["inputs"])
        if template in ("one_worked_example", "two_examples_plain", "input_rule_then_example"):
            assert example["input"] in r["inputs"]
        if template in ("one_worked_example", "three_examples_reasoned"):
            assert example["explanation"] in r["inputs"]
        sources = [
            k for (name, text), k in by_input.items() if name == r["task"] and text in r["inputs"]
        ]
        assert sources and r["targets"] == sources[0][0]


# ----------------------------------------------------------------------------- scale


def _huge(path: Path, n: int) -> Path:
    """An NIv2 file of n instances (~1 KB each), written in pieces."""
    head = json.dumps({"Definition": ["Repeat the input."], "Categories": ["Misc."]})[:-1]
    with path.open("w", encoding="utf-8") as f:
        f.write(head + ', "Instances": [')
        body = "word " * 190
        for i in range(n):
            f.write(
                ("," if i else "")
                + json.dumps({"id": f"t-{i}", "input": f"{i} {body}", "output": [str(i)]})
            )
        f.write('], "Instance License": ["MIT"]}')
    return path


def test_huge_file_is_streamed_in_bounded_memory(tmp_path):
    path = _huge(tmp_path / "task7_huge.json", 20_000)  # ~19 MB (the benchmark reads 100 MB ones)
    assert path.stat().st_size > 19_000_000
    tracemalloc.start()
    try:
        assert count_instances(path) == 20_000
        rows = read_rows(path, [0, 10_000, 19_999])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r["output"] for r in rows] == [["0"], ["10000"], ["19999"]]
    assert peak < 10 * 2**20, f"peak {peak / 2**20:.1f} MiB"  # measured: 6 MiB


def test_a_task_file_edited_after_import_is_named_at_its_own_line(tree, tmp_path):
    """The error named the imported task's YAML with the JSON file's line number."""
    src = tmp_path / "tasks"
    src.mkdir()
    one = src / "task001_fixture_question_generation.json"
    shutil.copy(tree / "tasks" / one.name, one)
    out = tmp_path / "cat"
    import_natural_instructions([one], out)
    data = json.loads(one.read_text())
    data["Instances"][3]["input"] = 5
    one.write_text(json.dumps(data, indent=1))  # another size: the instances are counted again
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: n\ncatalog: {out}\nclusters: all\ncap: 50\n")
    with pytest.raises(FlanmixError, match="instance 3 has no 'input' string") as err:
        compile_mixture(spec, tmp_path / "o", offline=True)
    loc = err.value.location
    assert loc.file == str(one.resolve()) and loc.row == 3
    lines = one.read_text().splitlines()
    assert '"input": 5' in "".join(lines[loc.line - 1 : loc.line + 4])  # the instance's lines


def test_a_huge_instance_is_not_copied_into_the_task_file(tree, tmp_path):
    """An instance of 20 MB among the first five made a task file over the YAML cap, which lint
    and compile then refused."""
    from flanmix.niv2 import SAMPLE_CHARS

    src = tmp_path / "tasks"
    src.mkdir()
    one = src / "task001_fixture_question_generation.json"
    data = json.loads((tree / "tasks" / one.name).read_text())
    data["Instances"][1]["input"] = "x" * (SAMPLE_CHARS + 1)
    one.write_text(json.dumps(data))
    out = tmp_path / "cat"
    import_natural_instructions([one], out)
    (task_file,) = (out / "task_templates").rglob("*.yaml")
    assert task_file.stat().st_size < SAMPLE_CHARS
    assert load_catalog(out).task(task_file.stem).source.niv2.instances == len(data["Instances"])
