"""Lint: each broken fixture file states what lint must report (code, line, message) in its first line."""

import json
import re
import time
from pathlib import Path

import pytest

from benchmarks.bench_lint import write_synthetic_library
from flanmix.cli import main
from flanmix.lint import LintOptions, lint_paths

from .conftest import FIXTURES, REPO

BROKEN = sorted((FIXTURES / "lint" / "broken").glob("*.yaml"))
QUIET = LintOptions(min_templates=1, min_inverted=0, min_samples=1)


def _expectation(path: Path) -> dict[str, str]:
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("# expect: "), f"{path} must start with an '# expect:' line"
    spec = header.removeprefix("# expect: ")
    keys = list(re.finditer(r"(\w+)=", spec))
    out = {}
    for k, nxt in zip(keys, keys[1:] + [None], strict=False):
        out[k.group(1)] = spec[k.end() : nxt.start() if nxt else None].strip()
    return out


def test_at_least_twenty_broken_fixtures():
    assert len(BROKEN) >= 20


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_fixture_is_reported_at_its_line(path):
    expect = _expectation(path)
    report = lint_paths([path], options=QUIET)
    matches = [f for f in report.findings if f.code == expect["code"]]
    assert matches, f"expected {expect['code']}, got {[str(f) for f in report.findings]}"
    finding = matches[0]
    assert finding.file == str(path)
    assert finding.line == int(expect["line"]), str(finding)
    assert expect["message"] in finding.message, str(finding)
    if "hint" in expect:
        assert expect["hint"] in finding.hint, str(finding)
    if finding.code not in ("yaml", "schema"):
        assert finding.task == path.stem or finding.code == "schema"
    # findings outside the planted problem would be noise: everything reported is at or after the header
    assert all(f.severity in ("error", "warning", "info") for f in report.findings)
    if finding.severity == "error":
        assert not report.ok


def test_template_findings_name_the_template_and_field():
    report = lint_paths([FIXTURES / "lint" / "broken" / "undeclared_variable.yaml"], options=QUIET)
    (finding,) = [f for f in report.findings if f.code == "undeclared-variable"]
    assert (finding.task, finding.template, finding.field) == (
        "undeclared_variable",
        "review_label",
        "input",
    )
    assert "did you mean 'text'" in finding.hint


def test_sandbox_never_runs_the_payload(tmp_path):
    marker = Path("/tmp/flanmix_pwned")
    marker.unlink(missing_ok=True)
    lint_paths(sorted((FIXTURES / "lint" / "broken").glob("sandbox_*.yaml")), options=QUIET)
    assert not marker.exists()


def test_cluster_checks():
    root = FIXTURES / "lint" / "library"
    report = lint_paths([root / "task_templates"], options=QUIET)
    by_code = {}
    for f in report.findings:
        by_code.setdefault(f.code, []).append(f)
    clusters_file = str(root / "clusters.yaml")
    (ghost,) = by_code["cluster-unknown-task"]
    assert (ghost.file, ghost.line, ghost.task) == (clusters_file, 5, "ghost_task")
    assert "did you mean 'good_task'" in ghost.hint
    (dup,) = by_code["duplicate-task-id"]
    assert dup.file.endswith("good_task_copy.yaml") and dup.line == 1
    assert "good_task.yaml:1" in dup.message
    (unlisted,) = by_code["task-not-in-clusters"]
    assert (
        unlisted.task == "unlisted"
        and unlisted.line == 2
        and "add unlisted to clusters.toy.tasks" in unlisted.hint
    )
    (unknown,) = by_code["unknown-cluster"]
    assert unknown.task == "wrong_cluster" and "'sentimnt' is not defined" in unknown.message
    (overlap,) = by_code["overlap-unknown-member"]
    assert overlap.line == 14 and "did you mean 'toy'" in overlap.hint
    assert by_code["cluster-duplicate-entry"][0].line == 5
    assert by_code["empty-cluster"][0].severity == "warning"
    (two,) = by_code["task-in-two-clusters"]
    assert "toy, other" in two.message


def test_count_warnings_default_options():
    report = lint_paths(
        [FIXTURES / "lint" / "library" / "task_templates" / "toy" / "good_task.yaml"]
    )
    codes = {f.code for f in report.findings if f.severity == "warning"}
    assert {"few-templates", "few-inverted", "few-samples"} <= codes


def test_cli_exit_codes_and_json(capsys):
    good = REPO / "task_templates" / "nli" / "rte.yaml"
    assert main(["lint", str(good)]) == 0
    assert "OK:" in capsys.readouterr().out
    bad = FIXTURES / "lint" / "broken" / "jinja_syntax.yaml"
    assert (
        main(["lint", str(bad), "--format", "json", "--min-templates", "1", "--min-inverted", "0"])
        == 1
    )
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    (finding,) = [f for f in data["findings"] if f["code"] == "jinja-syntax"]
    assert (
        finding["line"] == 20
        and finding["template"] == "review_label"
        and finding["field"] == "input"
    )
    assert set(finding) >= {
        "severity",
        "file",
        "line",
        "task",
        "template",
        "field",
        "message",
        "hint",
    }


def test_strict_fails_on_warnings(capsys):
    near = FIXTURES / "lint" / "broken" / "near_duplicate.yaml"
    args = ["lint", str(near), "--min-templates", "1", "--min-inverted", "0", "--min-samples", "1"]
    assert main(args) == 0
    assert "OK: " in capsys.readouterr().out
    assert main(args + ["--strict"]) == 1
    out = capsys.readouterr().out
    assert "FAILED (--strict: warnings fail): " in out and "OK" not in out
    assert main(args + ["--strict", "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["strict"] is True


def test_render_error_is_not_also_reported_as_rendering_on_no_row():
    report = lint_paths([FIXTURES / "lint" / "broken" / "render_type_error.yaml"], options=QUIET)
    codes = [f.code for f in report.findings]
    assert "render-error" in codes and "renders-on-no-sample" not in codes


def test_lint_scales_to_a_hundred_tasks(tmp_path):
    """100 tasks x 10 templates x 5 samples: every template rendered on every row, no finding."""
    write_synthetic_library(tmp_path, 100, 10, 5)
    start = time.perf_counter()
    report = lint_paths([tmp_path / "task_templates"], options=LintOptions(min_inverted=2))
    elapsed = time.perf_counter() - start
    assert report.tasks == 100 and report.templates == 1000 and report.renders == 5000
    assert [str(f) for f in report.findings if f.code != "near-duplicate-template"] == []
    print(f"lint 100x10x5: {elapsed:.2f}s")


def test_lowercases_names_looks_at_whole_fields_with_names():
    from flanmix.lint import _capitalized_words, _case_lowering

    found = _case_lowering(
        "{{ a | trim('.') | lower }} {{ t.en | capitalize }} {{ xs[0] | lower }}\n"
        "{% set c = a %}{{ c | lower }} {{ a.split()[0] | lower }} {{ a[1:] | lower }} {{ a | upper }}"
    )
    # set variables are filtered out later (not a declared field); calls and slices are not whole fields
    assert found == [
        (1, "lower", ("a",)),
        (1, "capitalize", ("t", "en")),
        (1, "lower", ("xs", 0)),
        (2, "lower", ("c",)),
    ]
    assert _capitalized_words(["Washing a dog. Then I said I'm fine", "(Daily) news"]) == []
    assert _capitalized_words(["we met Ana Lima at the BBC."]) == ["Ana", "Lima", "BBC"]


def test_a_library_without_its_clusters_yaml_is_said(tmp_path):
    """lint said OK without clusters.yaml (its checks silently off), and OK with a folder there,
    where list and compile fail."""
    import shutil

    lib = tmp_path / "task_templates" / "c"
    lib.mkdir(parents=True)
    shutil.copy(REPO / "task_templates" / "sentiment" / "sst2.yaml", lib)
    codes = [(f.severity, f.code) for f in lint_paths([tmp_path / "task_templates"]).findings]
    assert ("warning", "clusters-missing") in codes
    (tmp_path / "clusters.yaml").mkdir()
    report = lint_paths([tmp_path / "task_templates"])
    assert ("error", "clusters-missing") in [(f.severity, f.code) for f in report.findings]


def test_unknown_keys_in_clusters_yaml_get_their_own_did_you_mean(tmp_path):
    """The hint listed a task file's keys (cluster, description, evaluation, ...)."""
    import shutil

    lib = tmp_path / "task_templates" / "c"
    lib.mkdir(parents=True)
    shutil.copy(REPO / "task_templates" / "sentiment" / "sst2.yaml", lib)
    (tmp_path / "clusters.yaml").write_text(
        "clusters:\n  c: {description: C, tasks: [sst2], taks: []}\noverlap_group: []\n"
    )
    hints = {f.field: f.hint for f in lint_paths([tmp_path / "task_templates"]).findings}
    assert hints["clusters.c.taks"].startswith("did you mean 'tasks'?")
    assert hints["overlap_group"].startswith("did you mean 'overlap_groups'?")
