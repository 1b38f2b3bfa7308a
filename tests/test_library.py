"""The bundled template library: the FLAN 2021 inventory, template counts, renders, lint-clean."""

import pytest

from flanmix.catalog import INVENTORY_END, INVENTORY_START, inventory_markdown, load_catalog
from flanmix.lint import lint_paths
from flanmix.render import Skip, render_samples

from .conftest import REPO

# The FLAN 2021 clusters and datasets (issue #3), as task ids.
INVENTORY = {
    "nli": ["anli_r1", "anli_r2", "anli_r3", "cb", "mnli_matched", "mnli_mismatched", "qnli", "rte", "snli", "wnli"],
    "commonsense": ["copa", "hellaswag", "piqa", "story_cloze"],
    "sentiment": ["imdb", "sentiment140", "sst2", "yelp_polarity"],
    "paraphrase": ["mrpc", "qqp", "paws_wiki", "stsb"],
    "closed_book_qa": ["arc_easy", "arc_challenge", "natural_questions", "trivia_qa"],
    "struct_to_text": ["common_gen", "dart", "e2e_nlg", "web_nlg"],
    "translation": [
        "para_crawl_enes", "wmt14_enfr", "wmt16_deen", "wmt16_tren",
        "wmt16_csen", "wmt16_fien", "wmt16_roen", "wmt16_ruen",
    ],
    "reading_comprehension": ["bool_q", "drop", "multirc", "openbookqa", "squad_v1", "squad_v2"],
    "reading_comprehension_commonsense": ["cosmos_qa", "record"],
    "coreference": ["definite_pronoun_resolution", "winogrande", "wsc", "wsc273"],
    "misc": ["coqa", "quac", "trec", "cola", "wic", "math_dataset", "fix_punct"],
    "summarization": [
        "aeslc", "cnn_dailymail", "gigaword", "multi_news", "newsroom", "samsum", "xsum", "ag_news",
        "opinion_abstracts_rotten_tomatoes", "opinion_abstracts_idebate", "wiki_lingua_en",
    ],
    # the FLAN Collection's chain-of-thought submix (issue 15), outside `clusters: all`
    "cot": [
        "cot_gsm8k", "cot_strategyqa", "cot_creak", "cot_qasc", "cot_esnli", "cot_ecqa",
        "cot_sensemaking", "cot_aqua", "cot_qed",
    ],
}  # fmt: skip
ALL_TASKS = [t for tasks in INVENTORY.values() for t in tasks]


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(REPO)


def test_cluster_inventory(catalog):
    assert {c: sorted(catalog.tasks_in_cluster(c)) for c in catalog.cluster_names()} == {
        c: sorted(t) for c, t in INVENTORY.items()
    }
    assert sorted(catalog.tasks) == sorted(ALL_TASKS)
    for cluster, tasks in INVENTORY.items():
        for task_id in tasks:
            tf = catalog.task_file(task_id)
            assert tf.task.cluster == cluster
            assert tf.path.parent.name == cluster and tf.path.stem == task_id


@pytest.mark.parametrize("task_id", ALL_TASKS)
def test_task_templates(catalog, task_id):
    task = catalog.task(task_id)
    assert len(task.templates) >= 10
    inverted = sum(t.inverted for t in task.templates)
    if task.inverted_unavailable is None:
        assert inverted >= 2, f"{task_id}: {inverted} inverted templates"
    assert len(task.samples) >= 5
    if task.evaluation.kind == "options":
        assert any(t.answer_choices is not None for t in task.templates)
    rendered: dict[str, int] = {}
    for _, ct, result in render_samples(task):  # raises on any template error
        if not isinstance(result, Skip):
            rendered[ct.id] = rendered.get(ct.id, 0) + 1
            assert result.input and result.target
            if result.choices is not None:
                assert result.target in result.choices
    assert set(rendered) == {t.id for t in task.templates}, "every template renders on some sample"


def test_samples_cover_every_label(catalog):
    for task_id in ALL_TASKS:
        task = catalog.task(task_id)
        for name, spec in task.fields.items():
            if spec.type == "class_label":
                seen = {task.rename_row(s).get(name) for s in task.samples}
                assert set(range(len(spec.names))) <= seen, f"{task_id}.{name}"


def test_library_lints_clean():
    report = lint_paths([REPO / "task_templates"])
    problems = [str(f) for f in report.findings if f.severity != "info"]
    assert problems == []
    assert report.tasks == len(ALL_TASKS)


def test_readme_inventory_is_up_to_date(catalog):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split(INVENTORY_START, 1)[1].split(INVENTORY_END, 1)[0]
    assert block.strip() == inventory_markdown(catalog).strip(), (
        "README inventory is stale: run `flanmix list --markdown --update README.md`"
    )


def test_samples_round_trip_through_datasets_features(catalog):
    """Declared fields are real `datasets` features: the samples encode and read back unchanged."""
    import datasets

    for task_id in ALL_TASKS:
        task = catalog.task(task_id)
        features = datasets.Features(
            {name: spec.to_feature() for name, spec in task.fields.items()}
        )
        rows = [task.rename_row(s) for s in task.samples]
        ds = datasets.Dataset.from_list(rows, features=features)
        assert ds.num_rows == len(rows)
        back = ds.to_list()
        for before, after in zip(rows, back, strict=True):
            for key, value in before.items():
                if isinstance(value, float) or value is None:
                    continue
                assert after[key] == value, f"{task_id}.{key}"


def test_wheel_ships_every_cluster_folder():
    """pyproject's data-files name each task_templates/<cluster>/ folder: a new folder needs a line."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "data-files"
    ]
    folders = {p.name for p in (REPO / "task_templates").iterdir() if p.is_dir()}
    shipped = {
        k.rsplit("/", 1)[1] for k in data_files if k.startswith("share/flanmix/task_templates/")
    }
    assert shipped == folders
    assert data_files["share/flanmix"] == ["clusters.yaml"]
