"""The mixture compiler: holdouts, caps, rates, template use, formats, few-shot, eval split.

Uses the fixture library in tests/fixtures/mix (four tasks, four clusters, one overlap group) and
local Parquet sources generated in tmp_path for sizes beyond the samples.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flanmix.catalog import load_catalog
from flanmix.compile import compile_mixture
from flanmix.errors import CompileError, SpecError
from flanmix.mixture import Mixture
from flanmix.plan import plan_mixture, resolve_holdout
from flanmix.sampling import VARIED_HEADERS, VARIED_MARKERS, options_block
from flanmix.spec import spec_from_mapping

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mix"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(FIXTURE)


def write_sources(root: Path, n: int = 2000, n_eval: int = 300) -> dict[str, str]:
    """Local Parquet sources for the four fixture tasks: root/<task>/{train,validation,test}.parquet."""
    root.mkdir(parents=True, exist_ok=True)
    tables = {
        "ent": lambda k, s: {
            "premise": [f"{s} premise {i} about the harbour." for i in range(k)],
            "hypothesis": [f"{s} hypothesis {i}." for i in range(k)],
            "label": [i % 2 for i in range(k)],
        },
        "senti": lambda k, s: {
            "text": [f"{s} review {i}, {'great' if i % 2 else 'dull'}." for i in range(k)],
            "label": [i % 2 for i in range(k)],
        },
        "trivia": lambda k, s: {
            "question": [f"{s} question {i}?" for i in range(k)],
            "answer": [f"answer {i}" for i in range(k)],
        },
        "same": lambda k, s: {
            "a": [f"{s} a {i}." for i in range(k)],
            "b": [f"{s} b {i}." for i in range(k)],
            "label": [i % 2 for i in range(k)],
        },
    }
    out = {}
    for task, make in tables.items():
        folder = root / task
        folder.mkdir(exist_ok=True)
        pq.write_table(pa.table(make(n, "train")), folder / "train.parquet", row_group_size=500)
        for split in ("validation", "test"):
            pq.write_table(pa.table(make(n_eval, split)), folder / f"{split}.parquet")
        out[task] = str(folder)
    return out


def make_spec(**overrides):
    data = {
        "name": "t",
        "clusters": "all",
        "holdout": {"clusters": ["qa"]},
        "cap": 100,
        "total_rows": 300,
    }
    data.update(overrides)
    return spec_from_mapping(data)


def compile_(spec, out, catalog, tmp_path=None, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("offline", True)
    return compile_mixture(spec, out, catalog=catalog, base_dir=tmp_path or out.parent, **kw)


# ----------------------------------------------------------------------------- holdouts


def test_holdout_overlap_group_remove_error_allow(catalog):
    removed = resolve_holdout(
        make_spec(holdout={"clusters": ["nli"], "on_overlap": "remove"}), catalog, "s.yaml"
    )
    assert removed["tasks"] == ["ent"] and removed["removed_for_overlap"] == {"same": "nli_para"}
    with pytest.raises(SpecError, match="overlap group 'nli_para'.*same"):
        resolve_holdout(
            make_spec(holdout={"clusters": ["nli"], "on_overlap": "error"}), catalog, "s.yaml"
        )
    allowed = resolve_holdout(
        make_spec(holdout={"clusters": ["nli"], "on_overlap": "allow"}), catalog, None
    )
    assert allowed["removed_for_overlap"] == {} and allowed["overlap_allowed"] == ["nli_para"]


def test_holdout_unknown_cluster_is_a_located_error(catalog):
    with pytest.raises(SpecError) as err:
        resolve_holdout(make_spec(holdout={"clusters": ["nlii"]}), catalog, "mix.yaml")
    text = str(err.value)
    assert (
        "unknown cluster 'nlii'" in text
        and "holdout.clusters[0]" in text
        and "did you mean 'nli'" in text
    )


def test_no_held_out_row_in_train(tmp_path, catalog):
    spec = make_spec(
        holdout={"clusters": ["nli"], "on_overlap": "remove"}, templates={"mode": "all"}
    )
    compile_(spec, tmp_path / "out", catalog)
    mix = Mixture.open(tmp_path / "out")
    train_tasks = {r["task"] for r in mix.iter_rows("train", ["task"])}
    eval_tasks = {r["task"] for r in mix.iter_rows("eval", ["task"])}
    assert train_tasks == {"senti", "trivia"}  # ent held out, same removed (overlap group)
    assert eval_tasks == {"ent"}
    assert mix.manifest["holdout"]["removed_for_overlap"] == {"same": "nli_para"}


# ----------------------------------------------------------------------------- caps and rates


def test_cap_and_examples_proportional_rates(tmp_path, catalog):
    sources = write_sources(tmp_path / "src", n=2000)
    spec = make_spec(
        cap=500,
        total_rows=None,
        mixing={"max_rate": 100},
        sources=sources,
        clusters=["nli", "sentiment"],
        holdout={},
    )
    plan = plan_mixture(spec, catalog, base_dir=tmp_path, offline=False)
    train = {tp.task: tp for tp in plan.tasks.values() if tp.role == "train"}
    assert set(train) == {"ent", "senti"}
    assert all(tp.num_selected == 500 for tp in train.values())
    assert sum(tp.planned for tp in train.values()) == 1000  # total = capped sizes
    assert train["ent"].planned == train["senti"].planned == 500  # both at the max rate


def test_weights_and_nested_submixes(tmp_path, catalog):
    spec = spec_from_mapping(
        {
            "name": "w",
            "total_rows": 1000,
            "mixing": {"method": "weights"},
            "submixes": [
                {
                    "name": "a",
                    "weight": 3,
                    "tasks": ["ent", "same"],
                    "mixing": {"method": "weights", "weights": {"ent": 1, "same": 4}},
                },
                {"name": "b", "weight": 1, "tasks": ["senti"]},
            ],
            "holdout": {"clusters": ["qa"], "on_overlap": "allow"},
        }
    )
    plan = plan_mixture(spec, catalog, base_dir=tmp_path, offline=True)
    planned = {tp.task: tp.planned for tp in plan.tasks.values() if tp.role == "train"}
    assert planned == {"ent": 150, "same": 600, "senti": 250}


def test_cap_of_zero_is_rejected():
    with pytest.raises(SpecError, match="cap"):
        make_spec(cap=0)


def test_empty_mixture_is_an_error_and_nothing_written(tmp_path, catalog):
    spec = make_spec(clusters=["qa"], holdout={"clusters": ["qa"]})
    with pytest.raises(CompileError, match="empty mixture"):
        compile_(spec, tmp_path / "out", catalog)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


# ----------------------------------------------------------------------------- templates and formats


@pytest.mark.parametrize("mode", ["all", "random", "round_robin"])
@pytest.mark.parametrize("inverted", [True, False, 0.5])
def test_template_modes(tmp_path, catalog, mode, inverted):
    spec = make_spec(
        templates={"mode": mode, "inverted": inverted}, total_rows=600, tasks=["senti"], clusters=[]
    )
    compile_(spec, tmp_path / "out", catalog)
    rows = list(Mixture.open(tmp_path / "out").iter_rows("train"))
    used = Counter(r["template_id"] for r in rows)
    if inverted is False:
        assert not any(r["inverted"] for r in rows)
    else:
        assert any(r["inverted"] for r in rows)
    assert {"senti.review", "senti.stars"} <= set(used)
    if mode == "round_robin" and inverted is True:
        assert max(used.values()) - min(used.values()) <= 1


def test_flan_options_block_and_target():
    block, labels = options_block(("yes", "no"), None)
    assert block == "\n\nOPTIONS:\n- yes\n- no" and labels == ("yes", "no")


def test_varied_options_styles_rewrite_targets(tmp_path, catalog):
    spec = make_spec(
        formats={"options": 1.0, "options_style": "varied"},
        total_rows=600,
        tasks=["senti"],
        clusters=[],
        templates={"inverted": False},
    )
    compile_(spec, tmp_path / "out", catalog)
    rows = list(Mixture.open(tmp_path / "out").iter_rows("train"))
    assert all(r["format"] == "zs_opt" for r in rows)
    assert all(r["options"][r["answer_index"]] == r["targets"] for r in rows)
    assert any(r["targets"] in ("A", "(A)", "1", "B", "(B)", "2") for r in rows)
    headers = {r["inputs"].split("\n\n")[-1].split("\n")[0] for r in rows}
    assert len(headers) > 3
    assert len(VARIED_HEADERS) * len(VARIED_MARKERS) >= 20


def test_options_ratio_and_formats(tmp_path, catalog):
    spec = make_spec(
        formats={"options": 0.5},
        total_rows=800,
        tasks=["senti"],
        clusters=[],
        templates={"inverted": False},
    )
    compile_(spec, tmp_path / "out", catalog)
    fmts = Counter(r["format"] for r in Mixture.open(tmp_path / "out").iter_rows("train"))
    assert set(fmts) == {"zs_opt", "zs_noopt"}
    assert 0.35 < fmts["zs_opt"] / sum(fmts.values()) < 0.65


def test_cot_templates_on_and_off(tmp_path, catalog):
    for cot in (True, False):
        spec = make_spec(
            templates={"mode": "all", "cot": cot}, tasks=["trivia"], clusters=[], holdout={}
        )
        out = tmp_path / f"out{cot}"
        compile_(spec, out, catalog)
        fmts = {r["format"] for r in Mixture.open(out).iter_rows("train")}
        assert ("cot" in fmts) is cot


def test_few_shot_exemplars_only_from_train_rows(tmp_path, catalog):
    sources = write_sources(tmp_path / "src", n=400, n_eval=50)
    spec = make_spec(
        formats={"few_shot": 1.0, "k": 3, "max_length": 4000},
        sources=sources,
        total_rows=None,
        cap=400,
        holdout={"clusters": ["qa"]},
    )
    compile_(spec, tmp_path / "out", catalog, tmp_path=tmp_path, offline=False)
    mix = Mixture.open(tmp_path / "out")
    rows = list(mix.iter_rows("train"))
    assert Counter(r["format"][:3] for r in rows)["fs_"] > 0.9 * len(rows)
    for r in rows:
        assert r["source_split"] == "train"
        assert "validation" not in r["inputs"] and "test" not in r["inputs"]
        if r["format"].startswith("fs_"):
            assert (
                2 <= len(re.findall(r"train (?:premise|review|a) \d+", r["inputs"])) <= 4
            )  # exemplars + query
    assert all(len(r["inputs"]) <= 4000 for r in rows if r["format"].startswith("fs_"))


def test_few_shot_fitted_to_max_length(tmp_path, catalog):
    spec = make_spec(
        formats={"few_shot": 1.0, "k": 5, "max_length": 150},
        tasks=["senti"],
        clusters=[],
        templates={"inverted": False},
    )
    compile_(spec, tmp_path / "out", catalog)
    for r in Mixture.open(tmp_path / "out").iter_rows("train"):
        if r["format"].startswith("fs_"):
            assert len(r["inputs"]) <= 150


# ----------------------------------------------------------------------------- eval split


def test_eval_split_every_template_with_options_column(tmp_path, catalog):
    spec = make_spec(
        holdout={"clusters": ["nli", "qa"], "on_overlap": "remove"}, clusters=["sentiment"]
    )
    compile_(spec, tmp_path / "out", catalog)
    mix = Mixture.open(tmp_path / "out")
    rows = list(mix.iter_rows("eval"))
    ent = catalog.task("ent")
    per_template = Counter(r["template_id"] for r in rows if r["task"] == "ent")
    assert set(per_template) == {f"ent.{t.id}" for t in ent.templates}
    for r in rows:
        if r["options"] is not None:
            assert r["metrics"] == ["accuracy"] and r["options"][r["answer_index"]] == r["targets"]
            if r["template_id"] != "ent.listed":
                assert "\n\nOPTIONS:\n- " in r["inputs"]
        else:
            assert r["metrics"] == (["exact_match"] if r["task"] == "trivia" else ["rouge_l"])
    assert {r["format"] for r in rows if r["task"] == "trivia"} == {"zs_noopt", "cot"}


def test_eval_rows_carry_references(tmp_path):
    """Non-inverted generation rows: target + the task's references expression; inverted and
    options rows: their target; train rows: null."""
    import shutil

    import yaml

    lib = tmp_path / "lib"
    shutil.copytree(FIXTURE, lib)
    path = lib / "task_templates/qa/trivia.yaml"
    data = yaml.safe_load(path.read_text())
    data["evaluation"]["references"] = "{{ [answer, 'the ' ~ answer, answer, ''] }}"
    data.pop("inverted_unavailable")
    data["templates"].append(
        {
            "id": "ask",
            "inverted": True,
            "input": "Ask for {{ answer }}.",
            "target": "{{ question }}",
        }
    )
    path.write_text(yaml.safe_dump(data))
    spec = make_spec(holdout={"clusters": ["qa", "nli"], "on_overlap": "remove"})
    compile_(spec, tmp_path / "out", load_catalog(lib))
    mix = Mixture.open(tmp_path / "out")
    rows = list(mix.iter_rows("eval"))
    seen = set()
    for r in rows:
        if r["options"] is not None or r["inverted"]:
            assert r["references"] == [r["targets"]]
        elif r["task"] == "trivia":
            answer = re.search(r"(\d+)\.?$", r["targets"]).group(1)
            assert r["references"] == list(dict.fromkeys([r["targets"], answer, "the " + answer]))
        else:  # no references expression: the target alone
            assert r["references"] == [r["targets"]]
        seen.add((r["task"], r["inverted"], r["options"] is None))
    assert {("trivia", True, True), ("trivia", False, True), ("ent", False, False)} <= seen
    assert all(r["references"] is None for r in mix.iter_rows("train", columns=["references"]))


# ----------------------------------------------------------------------------- errors


def test_template_failing_on_real_rows_names_task_template_row(tmp_path, catalog):
    import yaml

    lib = tmp_path / "lib"
    (lib / "task_templates" / "qa").mkdir(parents=True)
    (lib / "clusters.yaml").write_text("clusters:\n  qa: {tasks: [trivia]}\n")
    data = yaml.safe_load((FIXTURE / "task_templates/qa/trivia.yaml").read_text())
    data["templates"][0]["target"] = "{{ answer[0:3] ~ (answer | int(default=none)).bit_length() }}"
    (lib / "task_templates/qa/trivia.yaml").write_text(yaml.safe_dump(data))
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(
        pa.table({"question": ["q?"] * 5, "answer": ["1", "2", "3", "x", "5"]}),
        src / "train.parquet",
    )
    spec = spec_from_mapping(
        {
            "name": "bad",
            "tasks": ["trivia"],
            "templates": {"mode": "all"},
            "sources": {"trivia": str(src)},
        }
    )
    with pytest.raises(CompileError) as err:
        compile_mixture(
            spec, tmp_path / "out", catalog=load_catalog(lib), workers=1, base_dir=tmp_path
        )
    text = str(err.value)
    assert (
        "task=trivia" in text
        and "template=qa" in text
        and "row=3" in text
        and "trivia.yaml" in text
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_source_that_cannot_be_loaded(tmp_path, catalog):
    from flanmix.errors import SourceError

    spec = make_spec(sources={"ent": str(tmp_path / "nowhere")})
    with pytest.raises(SourceError) as err:
        compile_(spec, tmp_path / "out", catalog, offline=False)
    assert "task=ent" in str(err.value) and "train.parquet" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_falls_back_to_samples_and_says_so(tmp_path, catalog):
    spec = make_spec(tasks=["senti"], clusters=[], holdout={})
    manifest = compile_(
        spec, tmp_path / "out", catalog, offline=False
    )  # HF_HUB_OFFLINE=1: unreachable
    assert manifest["offline"] is False and manifest["uses_samples"] is True
    assert manifest["tasks"]["train:senti"]["source"].startswith("samples (hub unreachable:")


def test_round_robin_gives_every_row_every_template(tmp_path, catalog):
    """Repeats of a row rotate through the templates (not a fixed subset set by draw positions)."""
    n_samples = len(catalog.task("senti").samples)
    n_templates = len(catalog.task("senti").templates)
    spec = make_spec(
        tasks=["senti"], clusters=[], holdout={}, cap=None, total_rows=n_samples * n_templates,
        templates={"mode": "round_robin", "inverted": True}, formats={"options": 0.0},
    )  # fmt: skip
    compile_(spec, tmp_path / "out", catalog)
    seen: dict[int, set[str]] = {}
    for r in Mixture.open(tmp_path / "out").iter_rows("train", ["source_index", "template_id"]):
        seen.setdefault(r["source_index"], set()).add(r["template_id"])
    assert len(seen) == n_samples
    assert all(len(t) == n_templates for t in seen.values()), seen
