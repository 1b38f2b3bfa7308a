"""mixtures/flan2022.yaml (the FLAN Collection) compiles offline from the task files' samples, the
T0-SF catalog imported from the installed promptsource templates and the NIv2 catalog imported
from the test fixtures; each submix gets its renormalised weight and its formats."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml

from flanmix.catalog import add_catalogs, load_catalog
from flanmix.compile import compile_mixture
from flanmix.errors import CatalogError, SpecError
from flanmix.spec import load_spec

from .conftest import REPO

SPEC = REPO / "mixtures" / "flan2022.yaml"
CATALOGS = REPO / "catalogs"
NIV2 = REPO / "tests" / "fixtures" / "niv2_tasks"
WEIGHTS = {"flan2021": 0.4, "t0sf": 0.32, "niv2": 0.2, "cot": 0.05}  # FLAN v2's, dialog left out
ROWS = 6000  # enough draws per template for few-shot exemplars on sample rows


def submix_of(cluster: str) -> str:
    if cluster.startswith(("t0sf/", "niv2/")):
        return cluster.split("/")[0]
    return "cot" if cluster == "cot" else "flan2021"


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """The shipped spec compiled offline (with more rows, so that few-shot examples find
    exemplars among the sample rows), and a fresh import of the T0-SF catalog."""
    from flanmix.promptsource import installed_templates
    from flanmix.promptsource_catalog import build_catalog

    root = tmp_path_factory.mktemp("flan2022")
    try:
        templates = installed_templates()
    except Exception:  # noqa: BLE001 - promptsource is an optional extra
        pytest.skip("promptsource is not installed")
    report = build_catalog(templates, root / "t0sf", selection="t0sf")
    spec, base = load_spec(SPEC)
    spec = spec.model_copy(update={"total_rows": ROWS})
    manifest = compile_mixture(spec, root / "out", offline=True, base_dir=base)
    table = pq.read_table(sorted((root / "out").glob("train-*.parquet"))[0]).to_pylist()
    return {"root": root, "report": report, "manifest": manifest, "rows": table}


@pytest.mark.slow  # the shared fixture imports two catalogs and compiles (~20 s)
def test_t0sf_catalog_is_compile_ready(collection):
    report = collection["report"]
    ready = {o.key for o in report.ready}
    assert len(ready) == 25  # every T0-SF file but wiki_hop/original (no script-free copy)
    assert "wiki_hop/original" not in ready
    assert report.reasons() == {
        "no script-free hub copy (table says why)": 1,
        "not in the selection": 253,
    }
    # pinned features replace the inferred ones, e.g. race's options are a list of strings
    race = yaml.safe_load(
        (CATALOGS / "t0sf/task_templates/multiple_choice_qa/ps_race_high.yaml").read_text()
    )
    assert race["fields"]["options"] == "list[string]"
    assert race["source"]["hf"] == {"path": "ehovy/race", "name": "high"}
    assert race["metadata"]["fields_inferred"] is False


@pytest.mark.slow  # the shared fixture imports two catalogs and compiles (~20 s)
def test_shipped_t0sf_catalog_is_current(collection):
    """catalogs/t0sf is what `flanmix import promptsource --catalog` writes today."""
    fresh = collection["root"] / "t0sf"
    files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    shipped = sorted(
        p.relative_to(CATALOGS / "t0sf") for p in (CATALOGS / "t0sf").rglob("*") if p.is_file()
    )
    assert files == shipped, (
        "remake it: flanmix import promptsource --catalog -o catalogs/t0sf --overwrite"
    )
    for rel in files:
        assert (fresh / rel).read_bytes() == (CATALOGS / "t0sf" / rel).read_bytes(), rel


@pytest.mark.slow  # the shared fixture imports two catalogs and compiles (~20 s)
def test_submix_shares_follow_flan_v2_weights(collection):
    counts = collection["manifest"]["counts"]["train"]["cluster"]
    total = sum(counts.values())
    assert total >= ROWS * 0.97  # a few label-gated draws may be dropped, nothing more
    shares = Counter()
    for cluster, n in counts.items():
        shares[submix_of(cluster)] += n / total
    norm = sum(WEIGHTS.values())  # 0.97: dialog's 0.03 is left out and the rest renormalised
    for name, weight in WEIGHTS.items():
        assert abs(shares[name] - weight / norm) < 0.01, (name, shares[name], weight / norm)


@pytest.mark.slow  # the shared fixture imports two catalogs and compiles (~20 s)
def test_submix_formats(collection):
    by = {name: Counter() for name in WEIGHTS}
    for row in collection["rows"]:
        by[submix_of(row["cluster"])][row["format"]] += 1
    # chain of thought: only cot formats, about half few-shot
    cot = by["cot"]
    assert set(cot) == {"cot", "fs_cot"}
    assert 0.35 < cot["fs_cot"] / sum(cot.values()) < 0.65
    # FLAN 2021 and T0-SF: all four formats; half few-shot, half of the choice examples with options
    for name in ("flan2021", "t0sf"):
        f = by[name]
        assert set(f) == {"zs_opt", "zs_noopt", "fs_opt", "fs_noopt"}, name
        n = sum(f.values())
        assert 0.35 < (f["fs_opt"] + f["fs_noopt"]) / n < 0.65, (name, f)
    # NIv2: few-shot lives in its templates (in-context examples), five of ten
    niv2 = load_catalog(NIV2)
    kind = {
        f"{t.id}.{tm.id}": tm.metadata.get("niv2_format", "")
        for t in (tf.task for tf in niv2.tasks.values())
        for tm in t.templates
    }
    rows = [r for r in collection["rows"] if submix_of(r["cluster"]) == "niv2"]
    few = sum(1 for r in rows if kind[r["template_id"]] == "in_context")
    assert set(kind.values()) == {"zero_shot", "in_context"}
    assert 0.35 < few / len(rows) < 0.65, Counter(kind[r["template_id"]] for r in rows)


@pytest.mark.slow  # the shared fixture imports two catalogs and compiles (~20 s)
def test_options_appear_on_about_half_of_choice_examples(collection):
    rows = [r for r in collection["rows"] if submix_of(r["cluster"]) in ("flan2021", "t0sf")]
    opt = sum(1 for r in rows if r["format"].endswith("_opt"))
    assert opt > 0.15 * len(rows)


def test_added_catalogs_are_namespaced():
    merged = add_catalogs(load_catalog(), {"t0sf": CATALOGS / "t0sf", "niv2": NIV2})
    assert "t0sf/sentiment" in merged.cluster_names() and "sentiment" in merged.cluster_names()
    assert "niv2/summarization" in merged.cluster_names()
    assert "t0sf/sentiment" not in merged.all_clusters() and "cot" not in merged.all_clusters()
    assert merged.task("ps_amazon_polarity").cluster == "t0sf/sentiment"
    assert [c for _, c in merged.expand_clusters(["cot", "t0sf/*"])][:2] == [
        "cot",
        "t0sf/closed_book_qa",
    ]
    with pytest.raises(CatalogError, match="in two catalogs"):
        add_catalogs(merged, {"again": CATALOGS / "t0sf"})


def test_a_missing_catalog_is_an_error_and_writes_nothing(tmp_path):
    (tmp_path / "mixtures").mkdir()
    shutil.copy(SPEC, tmp_path / "mixtures" / "flan2022.yaml")  # its catalogs are not beside it
    with pytest.raises(CatalogError, match="no template directory"):
        compile_mixture(tmp_path / "mixtures" / "flan2022.yaml", tmp_path / "out", offline=True)
    assert not (tmp_path / "out").exists()


def test_catalog_names_must_be_ids(tmp_path):
    spec = yaml.safe_load(SPEC.read_text())
    spec["catalogs"] = {"T0 SF": "../t0sf_tasks"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="catalog name"):
        compile_mixture(path, tmp_path / "out", offline=True)


@pytest.mark.slow  # the shared fixture imports two catalogs and compiles (~20 s)
def test_manifest_records_the_spec(collection):
    spec = collection["manifest"]["spec"]
    assert [s["name"] for s in spec["submixes"]] == list(WEIGHTS)
    assert json.dumps(spec["catalogs"]) == json.dumps(
        {"t0sf": "../catalogs/t0sf", "niv2": "../tests/fixtures/niv2_tasks"}
    )


def test_catalog_overwrite_keeps_files_the_import_did_not_write(collection, tmp_path):
    import shutil

    from flanmix.errors import TaskFileError
    from flanmix.promptsource import installed_templates
    from flanmix.promptsource_catalog import build_catalog

    out = tmp_path / "t0sf"
    shutil.copytree(collection["root"] / "t0sf", out)
    mine = out / "task_templates" / "my_own_task.yaml"
    mine.write_text("id: my_own_task\n")
    with pytest.raises(TaskFileError, match=r"did not write \(task_templates/my_own_task.yaml\)"):
        build_catalog(installed_templates(), out, selection="t0sf", overwrite=True)
    assert mine.read_text() == "id: my_own_task\n"
    mine.unlink()
    build_catalog(installed_templates(), out, selection="t0sf", overwrite=True)  # its own: replaced
