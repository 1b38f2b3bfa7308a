"""FLAN 2021's task splits as data: the 12 leave-one-cluster-out mixtures and the shipped
intra-cluster specs hold out and train exactly FLAN's task sets (stated below, read from
google-research/FLAN flan/task_splits.py and mapped to flanmix's task names); single-task holdouts
keep their cluster siblings but take their related variants; built_from; sliced splits.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanmix.catalog import add_catalogs, load_catalog
from flanmix.errors import SpecError
from flanmix.plan import plan_mixture, resolve_holdout
from flanmix.sources import HubState, SourceReader, resolve_source
from flanmix.spec import load_spec, spec_from_mapping

REPO = Path(__file__).resolve().parent.parent

# FLAN 2021's task clusters (_DEFAULT_TASK_CLUSTERS_ABBREV) in the paper's 12 clusters: the code's
# math, conversational_qa, word_disambiguation, linguistic_acceptability, question_classification
# and text_formatting's fix_punct form the paper's "misc" (true_case and word_segment are code-only
# tasks flanmix does not have). Names mapped: glue_mrpc -> mrpc, imdb_reviews -> imdb. wsc273 (test split
# only) is in FLAN's code but in no cluster; the paper evaluates coreference on it, so it is added here.
FLAN_CLUSTERS = {
    "summarization": {
        "aeslc", "cnn_dailymail", "gigaword", "multi_news", "newsroom", "samsum", "xsum",
        "ag_news", "opinion_abstracts_rotten_tomatoes", "opinion_abstracts_idebate",
        "wiki_lingua_en",
    },
    "struct_to_text": {"web_nlg", "common_gen", "e2e_nlg", "dart"},
    "reading_comprehension": {"squad_v1", "squad_v2", "drop", "multirc", "openbookqa", "bool_q"},
    "closed_book_qa": {"trivia_qa", "natural_questions", "arc_challenge", "arc_easy"},
    "paraphrase": {"mrpc", "qqp", "paws_wiki", "stsb"},
    "sentiment": {"imdb", "sentiment140", "yelp_polarity", "sst2"},
    "commonsense": {"copa", "hellaswag", "story_cloze", "piqa"},
    "translation": {
        "para_crawl_enes", "wmt14_enfr", "wmt16_deen", "wmt16_tren", "wmt16_csen", "wmt16_fien",
        "wmt16_roen", "wmt16_ruen",
    },
    "coreference": {"definite_pronoun_resolution", "winogrande", "wsc", "wsc273"},
    "nli": {
        "anli_r1", "anli_r2", "anli_r3", "cb", "rte", "mnli_matched", "mnli_mismatched", "qnli",
        "wnli", "snli",
    },
    "misc": {"math_dataset", "quac", "coqa", "wic", "cola", "trec", "fix_punct"},
    "reading_comprehension_commonsense": {"record", "cosmos_qa"},
}  # fmt: skip

# generate_inter_cluster_splits: clusters that do not train while the key cluster is held out.
FLAN_NOT_TRAINED_WITH = {
    "reading_comprehension": {"reading_comprehension_commonsense"},
    "commonsense": {"reading_comprehension_commonsense"},
    "reading_comprehension_commonsense": {"reading_comprehension", "commonsense"},
    "paraphrase": {"nli"},
    "nli": {"paraphrase"},
}

# Where flanmix differs on purpose, per held-out cluster: tasks FLAN trains that flanmix does not.
# fix_punct is built from CNN/DailyMail here (FLAN's is from ParaCrawl), so it follows that text out.
NOT_TRAINED_BY_FLANMIX = {"summarization": {"fix_punct"}}
# wsc273 has only a test split (as in FLAN); SuperGLUE WSC trains on train[:-50], as FLAN's does.
NO_TRAIN_SPLIT = {"wsc273"}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_the_library_has_flans_clusters(catalog):
    assert set(catalog.all_clusters()) == set(FLAN_CLUSTERS)  # `clusters: all`; cot is apart
    for cluster, tasks in FLAN_CLUSTERS.items():
        assert set(catalog.tasks_in_cluster(cluster)) == tasks, cluster


def _loco_sets(catalog, cluster):
    spec, _ = load_spec(REPO / "mixtures" / "flan2021_loco.yaml")
    one = spec.model_copy(
        update={
            "holdout": spec.holdout.model_copy(
                update={"clusters": [cluster], "leave_one_cluster_out": False}
            )
        }
    )
    held = resolve_holdout(one, catalog, None)
    out = set(held["tasks"]) | set(held["removed_for_overlap"])
    flan2021 = {t for c in catalog.all_clusters() for t in catalog.tasks_in_cluster(c)}
    return set(held["tasks"]), flan2021 - out


@pytest.mark.parametrize("cluster", sorted(FLAN_CLUSTERS))
def test_loco_mixtures_equal_flans_inter_cluster_splits(catalog, cluster):
    evaluated, trained = _loco_sets(catalog, cluster)
    flan_eval = FLAN_CLUSTERS[cluster]
    flan_train = set().union(
        *(
            tasks
            for c, tasks in FLAN_CLUSTERS.items()
            if c != cluster and c not in FLAN_NOT_TRAINED_WITH.get(cluster, set())
        )
    )
    assert evaluated == flan_eval
    assert trained == flan_train - NOT_TRAINED_BY_FLANMIX.get(cluster, set())


def test_only_wsc273_lacks_a_training_split(catalog):
    assert {t for t in catalog.tasks if not catalog.task(t).source.splits.train} == NO_TRAIN_SPLIT
    assert catalog.task("story_cloze").source.splits.train == "validation[:-200]"  # as FLAN
    assert catalog.task("wsc").source.splits.train == "train[:-50]"  # FLAN's WSC_SPLITS_DICT


# generate_intra_cluster_splits(10 templates), splits 0-9: one task of each FLAN code cluster held
# out (collapsed variants together), mapped to flanmix names; true_case/word_segment dropped; FLAN's
# wsc is held out with wsc273 (related: the same Winograd schemas).
FLAN_INTRA = [
    "dart gigaword imdb mrpc natural_questions openbookqa qnli quac record story_cloze winogrande wmt16_ruen",
    "coqa cosmos_qa definite_pronoun_resolution e2e_nlg fix_punct hellaswag mnli_matched mnli_mismatched para_crawl_enes qqp sentiment140 squad_v1 squad_v2 trivia_qa wiki_lingua_en",
    "arc_challenge arc_easy cb copa multirc newsroom quac record stsb web_nlg wmt16_deen wsc wsc273 yelp_polarity",
    "bool_q common_gen coqa cosmos_qa natural_questions opinion_abstracts_idebate opinion_abstracts_rotten_tomatoes paws_wiki piqa sst2 winogrande wmt16_roen wnli",
    "cnn_dailymail dart definite_pronoun_resolution drop fix_punct imdb mrpc quac record snli story_cloze trivia_qa wmt16_fien",
    "anli_r1 anli_r2 anli_r3 arc_challenge arc_easy coqa cosmos_qa e2e_nlg hellaswag openbookqa qqp sentiment140 wmt14_enfr wsc wsc273 xsum",
    "ag_news copa natural_questions quac record rte squad_v1 squad_v2 stsb web_nlg winogrande wmt16_csen yelp_polarity",
    "common_gen coqa cosmos_qa definite_pronoun_resolution fix_punct multi_news multirc paws_wiki piqa qnli sst2 trivia_qa wmt16_tren",
    "aeslc arc_challenge arc_easy bool_q dart imdb mnli_matched mnli_mismatched mrpc quac record story_cloze wmt16_ruen wsc wsc273",
    "cb coqa cosmos_qa drop e2e_nlg hellaswag natural_questions para_crawl_enes qqp samsum sentiment140 winogrande",
]  # fmt: skip


@pytest.mark.parametrize("split", range(10))
def test_intra_cluster_specs_equal_flans_splits(catalog, split):
    path = REPO / "mixtures" / "flan2021_intra_cluster" / f"split_{split}.yaml"
    spec, _ = load_spec(path)
    held = resolve_holdout(spec, catalog, str(path))
    assert set(held["tasks"]) == set(FLAN_INTRA[split].split())
    # siblings train: nothing but what is built from held-out text leaves training
    assert set(held["removed_for_overlap"]) <= {"fix_punct"}


def _holdout(catalog, **holdout):
    return resolve_holdout(spec_from_mapping({"name": "h", "clusters": "all", "holdout": holdout}), catalog, None)  # fmt: skip


def test_single_task_holdout_keeps_its_siblings(catalog):
    held = _holdout(catalog, tasks=["rte"])
    assert held["tasks"] == ["rte"] and held["removed_for_overlap"] == {}


def test_single_task_holdout_takes_its_related_variants(catalog):
    held = _holdout(catalog, tasks=["anli_r1"])
    assert held["tasks"] == ["anli_r1", "anli_r2", "anli_r3"]
    assert held["related"] == {"anli_r2": "anli", "anli_r3": "anli"}
    with pytest.raises(SpecError, match="related tasks 'anli'.*anli_r2, anli_r3"):
        _holdout(catalog, tasks=["anli_r1"], on_overlap="error")
    allowed = _holdout(catalog, tasks=["anli_r1"], on_overlap="allow")
    assert allowed["tasks"] == ["anli_r1"] and allowed["overlap_allowed"] == ["anli"]


def test_built_from_follows_its_source_out(catalog):
    assert _holdout(catalog, clusters=["summarization"])["removed_for_overlap"] == {
        "fix_punct": "built_from:cnn_dailymail"
    }
    assert "fix_punct" in _holdout(catalog, tasks=["cnn_dailymail"])["removed_for_overlap"]
    misc = _holdout(catalog, clusters=["misc"])
    assert "cnn_dailymail" not in misc["tasks"] and misc["removed_for_overlap"] == {}


def test_sliced_split_reads_its_rows(tmp_path, catalog):
    folder = tmp_path / "story_cloze"
    folder.mkdir()
    rows = [dict(catalog.task("story_cloze").samples[0], story_id=str(i)) for i in range(250)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "validation.parquet")
    task = catalog.task("story_cloze")
    handle = resolve_source(task, "train", base_dir=tmp_path, hub=HubState(False), local_dir=folder)
    assert handle.num_rows == 50 and handle.split == "validation[:-200]"
    import numpy as np

    got = SourceReader(handle).read(np.array([0, 49]))
    assert [r["story_id"] for r in got] == ["0", "49"]


SHIPPED = sorted((REPO / "mixtures").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "mixtures")))
def test_every_shipped_spec_plans_offline(catalog, path):
    spec, base = load_spec(path)
    if spec.catalog:  # a spec with its own catalog (mixtures/niv2.yaml: an NIv2 import)
        catalog = load_catalog(base / spec.catalog)
    if spec.catalogs:  # more catalogs (mixtures/flan2022.yaml: T0-SF and NIv2 imports)
        catalog = add_catalogs(catalog, {n: base / c for n, c in spec.catalogs.items()})
    if spec.holdout.leave_one_cluster_out:
        spec = spec.model_copy(update={"holdout": spec.holdout.model_copy(update={"clusters": ["nli"], "leave_one_cluster_out": False})})  # fmt: skip
    plan = plan_mixture(spec, catalog, base_dir=base, offline=True, spec_file=str(path))
    assert any(tp.role == "train" for tp in plan.tasks.values())


def test_wheel_ships_every_mixtures_folder():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = {k for k in data_files["data-files"] if k.startswith("share/flanmix/mixtures")}
    folders = {p.parent for p in SHIPPED}
    assert shipped == {"share/flanmix/" + str(f.relative_to(REPO)) for f in folders}
