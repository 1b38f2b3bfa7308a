"""`flanmix sources check` and the compile pre-flight, on repository-shaped folders built here.

Each folder looks exactly like a hub dataset repository at one revision (a card with ``configs:``
and Parquet files, the hub's ``refs/convert/parquet`` layout, or a lone ``<name>.py`` script), and
``datasets.load_dataset_builder`` resolves it the way it resolves the hub. Tests against the real
hub skip when it cannot be reached (conftest sets HF_HUB_OFFLINE=1, so they skip by default).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml

from flanmix.catalog import DEFAULT_ROOT, load_catalog
from flanmix.cli import main
from flanmix.compile import compile_mixture
from flanmix.errors import PreflightError, SourceError
from flanmix.plan import plan_mixture, spec_source_uses
from flanmix.repo_fixture import write_fixture_local, write_fixture_repo
from flanmix.report import composition_report
from flanmix.sources_check import (
    HUB_ROOT_ENV,
    _Probe,
    check_task,
    check_tasks,
    format_reports,
    local_repo,
)
from flanmix.spec import load_spec

from .test_mix import FIXTURE, make_spec

SENTI = datasets.Features(
    {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
)


@pytest.fixture
def lib(tmp_path):
    """A copy of the test library (tasks ent, same, senti, trivia on fixture/<task>)."""
    shutil.copytree(FIXTURE, tmp_path / "lib")
    return tmp_path / "lib"


@pytest.fixture
def hub(tmp_path, lib):
    """A stand-in hub holding every task's repository as its task file declares it."""
    root = tmp_path / "hub"
    catalog = load_catalog(lib)
    for t in catalog.tasks:
        write_fixture_repo(catalog.task(t), root)
    return root


def edit_task(lib: Path, task: str, change) -> None:
    path = next(lib.glob(f"task_templates/*/{task}.yaml"))
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def parquet_repo(folder: Path, features, splits=("train", "test"), config="default") -> Path:
    """A converted repository: <config>/<split>-00000-of-00001.parquet and a card naming them."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / config).mkdir(parents=True)
    rows = {name: [] for name in features}
    table = datasets.Dataset.from_dict(rows, features=features).data.table
    for split in splits:
        pq.write_table(table, folder / config / f"{split}-00000-of-00001.parquet")
    card = {
        "configs": [
            {
                "config_name": config,
                "data_files": [{"split": s, "path": f"{config}/{s}-*.parquet"} for s in splits],
            }
        ]
    }
    (folder / "README.md").write_text("---\n" + yaml.safe_dump(card) + "---\n")
    return folder


def report(lib, hub, task="senti"):
    return check_task(load_catalog(lib).task_file(task), root=hub)


def kinds(r) -> list[str]:
    return [p.kind for p in r.errors]


# ----------------------------------------------------------------------------- the probe


def test_parquet_repository_passes_every_check(lib, hub):
    r = report(lib, hub)
    assert r.ok, format_reports([r])
    assert [c for c, s, _ in r.checks if s == "ok"] == [
        "repository", "script", "config", "split train", "split eval", "fields",
    ]  # fmt: skip
    assert (hub / "fixture" / "senti" / "README.md").is_file()  # features from the card


def test_script_only_repository_is_a_located_error(lib, hub):
    repo = hub / "fixture" / "senti"
    shutil.rmtree(repo)
    repo.mkdir()
    (repo / "README.md").write_text("# senti\n")
    (repo / "senti.py").write_text("import datasets\n")
    r = report(lib, hub)
    (p,) = r.errors
    assert p.kind == "script" and "senti.py" in p.message and "datasets>=4" in p.message
    assert (
        p.location.file.endswith("senti.yaml") and p.location.line == 6
    )  # the line of source.hf.path
    assert "refs/convert/parquet" in p.hint and "refs/pr/N" in p.hint
    assert "PROBLEM" in format_reports([r]) and "hint: point source.hf" in format_reports([r])


def test_missing_split_names_the_real_ones(lib, hub):
    parquet_repo(hub / "fixture" / "senti", SENTI, splits=("train", "validation"))
    r = report(lib, hub)
    (p,) = r.errors
    assert p.kind == "split" and p.role == "eval" and "'test'" in p.message
    assert "splits: train, validation" in p.hint
    assert p.location.line == 9  # source.splits.eval


def test_declared_field_absent_from_real_features(lib, hub):
    features = datasets.Features({"review": SENTI["text"], "label": SENTI["label"]})
    parquet_repo(hub / "fixture" / "senti", features)
    (p,) = report(lib, hub).errors
    assert p.kind == "field" and "'text'" in p.message
    assert "real columns: review, label" in p.hint and "source.rename" in p.hint
    # mapping it with rename fixes it
    edit_task(lib, "senti", lambda d: d["source"].update(rename={"review": "text"}))
    assert report(lib, hub).ok


def test_label_order_and_names_are_checked(lib, hub):
    flipped = datasets.Features(
        {"text": SENTI["text"], "label": datasets.ClassLabel(names=["positive", "negative"])}
    )
    parquet_repo(hub / "fixture" / "senti", flipped)
    (p,) = report(lib, hub).errors
    assert p.kind == "labels" and "label order differs" in p.message
    assert "index order" in p.hint
    renamed = datasets.Features(
        {"text": SENTI["text"], "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    parquet_repo(hub / "fixture" / "senti", renamed)
    (p,) = report(lib, hub).errors
    assert "label names differ" in p.message and "['neg', 'pos']" in p.message


def test_wrong_type_and_plain_int_label(lib, hub):
    features = datasets.Features({"text": datasets.Value("int32"), "label": SENTI["label"]})
    parquet_repo(hub / "fixture" / "senti", features)
    (p,) = report(lib, hub).errors
    assert p.kind == "type" and "declared string, real int" in p.message
    # a plain int where a class label is declared works, but its names cannot be checked
    features = datasets.Features({"text": SENTI["text"], "label": datasets.Value("int64")})
    parquet_repo(hub / "fixture" / "senti", features)
    r = report(lib, hub)
    assert r.ok and [p.severity for p in r.problems] == ["warning"]


def test_unknown_config_lists_the_real_ones(lib, hub):
    edit_task(lib, "senti", lambda d: d["source"]["hf"].update(name="plain_txt"))
    parquet_repo(hub / "fixture" / "senti", SENTI, config="plain_text")
    (p,) = report(lib, hub).errors
    assert p.kind == "config" and "'plain_txt'" in p.message
    assert "did you mean 'plain_text'" in p.hint


def test_parquet_export_revision_and_its_pitfalls(lib, tmp_path):
    root = tmp_path / "hub2"
    edit_task(
        lib,
        "senti",
        lambda d: d["source"]["hf"].update(revision="refs/convert/parquet", data_dir="plain_text"),
    )
    task = load_catalog(lib).task("senti")
    folder = write_fixture_repo(task, root)
    assert folder.name == "senti@refs%2Fconvert%2Fparquet" and folder == local_repo(
        task.source.hf, root
    )
    assert (folder / "plain_text" / "test" / "0000.parquet").is_file()
    assert report(lib, root).ok  # features from the Parquet footer, as the hub's converter writes
    # a config `name` does not exist in the export (one folder per config): a hint says so
    edit_task(lib, "senti", lambda d: d["source"]["hf"].update(name="plain_text", data_dir=None))
    (p,) = report(lib, root).errors
    assert p.kind == "config" and "data_dir: <config>" in p.hint
    # datasets reads a dev/ folder as the split 'validation'
    edit_task(lib, "senti", lambda d: d["source"]["hf"].update(name=None, data_dir="plain_text"))
    edit_task(lib, "senti", lambda d: d["source"]["splits"].update(eval="dev"))
    (folder / "plain_text" / "test").rename(folder / "plain_text" / "dev")
    r = report(lib, root)
    (p,) = r.errors
    assert p.kind == "split" and "'validation'" in p.hint, format_reports([r])


def test_missing_repository_folder_and_local_files(lib, tmp_path):
    r = report(lib, tmp_path / "empty_hub")
    assert kinds(r) == ["repository"] and "under the hub root" in r.errors[0].message
    edit_task(
        lib,
        "senti",
        lambda d: d["source"].update(hf=None, local={"format": "parquet", "files": {"train": "d/train.parquet", "test": "d/test.parquet"}}),
    )  # fmt: skip
    r = report(lib, None)
    assert kinds(r) == ["local", "local"] and "--offline" in r.errors[0].hint
    tf = load_catalog(lib).task_file("senti")
    assert len(write_fixture_local(tf.task, tf.path.parent)) == 2
    r = report(lib, None)
    assert r.ok and r.checks[-1][0] == "fields", format_reports([r])


def test_cli_table_json_and_exit_codes(lib, hub, capsys):
    args = ["sources", "check", "senti", "ent", "--root", str(lib), "--hub-root", str(hub)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "senti  hub:fixture/senti@main  ok" in out and "2 task(s): 2 ok" in out
    (hub / "fixture" / "ent" / "ent.py").write_text("")
    assert main([*args, "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    bad = {t["task"]: t for t in data["tasks"]}["ent"]
    assert bad["problems"][0]["kind"] == "script" and "ent.yaml:" in bad["problems"][0]["location"]
    assert main(["sources", "check", "sentt", "--root", str(lib)]) == 2  # unknown task: located
    assert "did you mean 'senti'" in capsys.readouterr().err


def test_check_a_spec_covers_its_tasks_in_their_roles(lib, hub, tmp_path, capsys):
    spec = {"name": "s", "catalog": str(lib), "clusters": ["sentiment", "qa"],
            "holdout": {"clusters": ["qa"]}}  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sources", "check", str(path), "--hub-root", str(hub)]) == 0
    out = capsys.readouterr().out
    assert "senti " in out and "trivia " in out and "ent " not in out
    spec_obj, _ = load_spec(path)
    uses = spec_source_uses(spec_obj, load_catalog(lib), str(path))
    assert uses == {"senti": {"train"}, "trivia": {"eval"}}


def _raiser(exc):
    def list_top(self, hf):
        raise exc

    return list_top


@pytest.mark.parametrize(
    "name, kind, hint",
    [
        ("GatedRepoError", "gated", "accept its conditions"),
        ("RevisionNotFoundError", "revision", "source.hf.revision"),
        ("RepositoryNotFoundError", "repository", "source.hf.path"),
    ],
)
def test_hub_refusals_are_classified(lib, monkeypatch, name, kind, hint):
    import huggingface_hub.errors

    cls = getattr(huggingface_hub.errors, name)
    exc = cls.__new__(cls)  # as the hub answers (the HTTP response itself is not needed here)
    Exception.__init__(exc, "refused")
    monkeypatch.setattr(_Probe, "list_top", _raiser(exc))
    (p,) = report(lib, None).errors  # fixture/senti is no folder: the hub is asked
    assert p.kind == kind and hint in p.hint


def test_a_hub_outage_is_probed_once_then_every_task_is_offline(lib, monkeypatch):
    from huggingface_hub import constants

    calls = []

    def down(self, hf):
        calls.append(hf.path)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(_Probe, "list_top", down)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    catalog = load_catalog(lib)
    items = [(catalog.task_file(t), {"train", "eval"}, None) for t in sorted(catalog.tasks)]
    reports = check_tasks(items)
    assert len(calls) == 1 and all(kinds(r) == ["offline"] for r in reports)
    assert "--offline" in reports[0].errors[0].hint


# ----------------------------------------------------------------------------- pre-flight


def _break_two(hub: Path) -> None:
    (hub / "fixture" / "senti" / "senti.py").write_text("")  # script-only repository
    features = datasets.Features({"premise": datasets.Value("string"), "label": SENTI["label"]})
    parquet_repo(hub / "fixture" / "ent", features, splits=("train", "validation"))


def test_preflight_reports_every_broken_source_and_writes_nothing(lib, hub, tmp_path, monkeypatch):
    monkeypatch.setenv(HUB_ROOT_ENV, str(hub))
    _break_two(hub)
    spec = make_spec(holdout={"clusters": ["qa"]})
    with pytest.raises(PreflightError) as err:
        compile_mixture(spec, tmp_path / "out" / "mix", catalog=load_catalog(lib), workers=1)
    text = str(err.value)
    assert "2 task source(s) cannot be read; nothing was written" in text
    assert "senti.yaml:6 task=senti: script:" in text
    assert "ent.yaml:" in text and "field: declared field 'hypothesis'" in text
    assert "on_source_error: skip" in text
    assert isinstance(err.value, SourceError)  # one hierarchy
    out = tmp_path / "out"
    assert not (out / "mix").exists() and not list(out.glob(".mix.tmp-*")) if out.exists() else True


def test_on_source_error_skip_publishes_the_rest_and_records_the_skip(
    lib, hub, tmp_path, monkeypatch
):
    monkeypatch.setenv(HUB_ROOT_ENV, str(hub))
    _break_two(hub)
    spec = make_spec(holdout={"clusters": ["qa"]}, on_source_error="skip", total_rows=None)
    log = []
    out = tmp_path / "out"
    m = compile_mixture(spec, out, catalog=load_catalog(lib), workers=1, log=log.append)
    assert set(m["counts"]["train"]["task"]) == {"same"}
    skipped = m["skipped_tasks"]
    assert skipped["train:senti"].startswith("source error (script):")
    assert skipped["train:ent"].startswith("source error (field):")
    assert any(s.startswith("NOTE: senti skipped (train, on_source_error: skip)") for s in log)
    assert "no train rows from senti: source error (script)" in composition_report(out)
    card = (out / "README.md").read_text()
    assert "## Skipped" in card and "| senti | train | source error (script)" in card
    assert m["tasks"]["train:same"]["source"].startswith("hub:fixture/same")  # the real files


def test_unreachable_hub_is_a_note_naming_each_task(lib, tmp_path):
    spec = make_spec(holdout={"clusters": ["qa"]})
    log = []
    m = compile_mixture(
        spec,
        tmp_path / "out",
        catalog=load_catalog(lib),
        workers=1,
        offline=False,
        log=log.append,
    )  # fmt: skip  (HF_HUB_OFFLINE=1 here)
    notes = [s for s in log if s.startswith("NOTE:")]
    assert len(notes) == 1 and "(hub unreachable:" in notes[0], log
    assert notes[0].endswith(": ent, same, senti, trivia")
    assert m["uses_samples"] is True


# ----------------------------------------------------------------------------- the shipped library


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A copy of the shipped library with every source reproduced from its task file: hub
    repositories under a stand-in hub, local files next to the copied task files."""
    tmp = tmp_path_factory.mktemp("library")
    lib = tmp / "lib"
    shutil.copytree(DEFAULT_ROOT / "task_templates", lib / "task_templates")
    shutil.copy(DEFAULT_ROOT / "clusters.yaml", lib / "clusters.yaml")
    catalog = load_catalog(lib)
    hub = tmp / "hub"
    for t in catalog.tasks:
        tf = catalog.task_file(t)
        write_fixture_repo(tf.task, hub)
        write_fixture_local(tf.task, tf.path.parent)
    return lib, hub


def test_sources_check_over_the_library_exits_0_on_its_fixtures(library, capsys):
    lib, hub = library
    assert main(["sources", "check", "--root", str(lib), "--hub-root", str(hub)]) == 0, (
        capsys.readouterr().out[-3000:]
    )
    out = capsys.readouterr().out
    n = len(load_catalog(lib).tasks)
    assert f"{n} task(s): {n} ok" in out


def test_preflight_of_the_library_reports_all_failures_at_once_fast(library, tmp_path):
    lib, hub = library
    catalog = load_catalog(lib)
    broken = {}
    for t in ("rte", "copa", "xsum"):
        hf = catalog.task(t).source.hf
        folder = local_repo(hf, hub)
        script = folder / (hf.path.split("/")[-1] + ".py")
        script.write_text("")
        broken[t] = script
    spec, base = load_spec(DEFAULT_ROOT / "mixtures" / "flan2021.yaml")
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"enabled": True})})
    os.environ[HUB_ROOT_ENV] = str(hub)
    try:
        start = time.perf_counter()
        with pytest.raises(PreflightError) as err:
            plan_mixture(spec, catalog, base_dir=base, spec_file="flan2021.yaml")
        took = time.perf_counter() - start
    finally:
        os.environ.pop(HUB_ROOT_ENV)
        for script in broken.values():
            script.unlink()
    failing = {p.location.task for p in err.value.problems}
    uses = spec_source_uses(spec, catalog)
    folders = {s.parent for s in broken.values()}  # a script breaks every task of its repository
    expected = {
        t for t in uses
        if catalog.task(t).source.hf and local_repo(catalog.task(t).source.hf, hub) in folders
    }  # fmt: skip
    assert {"rte", "copa", "xsum"} <= expected and failing == expected
    assert len(uses) > 50
    assert took < 5, f"pre-flight of {len(uses)} tasks took {took:.1f}s"


# ----------------------------------------------------------------------------- the real hub


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info("nyu-mll/glue", timeout=5)
        return True
    except Exception:  # noqa: BLE001
        return False


real_hub = pytest.mark.skipif(not _hub_reachable(), reason="the hub cannot be reached")


@real_hub
def test_real_hub_glue_rte_passes():
    tf = load_catalog(DEFAULT_ROOT).task_file("rte")
    r = check_task(tf)
    assert r.ok, format_reports([r])


@real_hub
def test_real_hub_script_only_repository(lib):
    edit_task(lib, "senti", lambda d: d["source"]["hf"].update(path="ybisk/piqa"))
    r = check_task(load_catalog(lib).task_file("senti"))
    assert "script" in kinds(r) or "revision" in kinds(r), format_reports([r])
