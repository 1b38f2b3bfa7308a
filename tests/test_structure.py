"""The compile's structure: stage modules without private imports, the typed pieces on their own."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flanmix.errors import MixtureError
from flanmix.mixture import MANIFEST, SCHEMA, Mixture, manifest_errors
from flanmix.plan import RATE_FNS, MixNode, TaskPlan, allot_rows
from flanmix.rows import COLUMNS, Row
from flanmix.spec import Mixing, Submix, spec_from_mapping

PACKAGE = Path(__file__).resolve().parent.parent / "flanmix"


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("flanmix")
            ):
                found += [
                    f"{path.name}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert found == []


def test_rows_are_the_schema_columns_in_order():
    assert Row._fields == COLUMNS == tuple(SCHEMA.names)


def _task(name: str, rows: int) -> TaskPlan:
    handle = SimpleNamespace(num_rows=rows)  # the planner reads only its row count here
    return TaskPlan(name, "c", "train", handle, ["t"], None, pool=rows)  # type: ignore[arg-type]


def test_mix_nodes_allot_by_the_rate_table():
    assert set(RATE_FNS) == {"examples_proportional", "weights"}
    a, b, c = _task("a", 5000), _task("b", 1000), _task("c", 1000)
    # examples-proportional at the root, capped at max_rate 3000: a 3000, b 1000, and the submix
    # counts its source rows (1000) unless it has a weight
    sub = MixNode(Submix(name="s"), [c], [])
    root = MixNode(Submix(name="root"), [a, b], [sub])
    root.allot(5000, Mixing(max_rate=3000))
    assert (a.planned, b.planned, c.planned) == (3000, 1000, 1000)
    # weights: named members get theirs, the others the default; a submix's own weight wins
    a2, b2, c2 = _task("a", 5000), _task("b", 1000), _task("c", 1000)
    sub2 = MixNode(Submix(name="s", weight=2.0), [c2], [])
    root2 = MixNode(Submix(name="root"), [a2, b2], [sub2])
    root2.allot(400, Mixing(method="weights", weights={"a": 1.0}, default_weight=1.0))
    assert (a2.planned, b2.planned, c2.planned) == (100, 100, 200)
    assert root2.size() == 7000 and root2.size(rows=True) == 7000


def test_allot_rows_fills_total_rows_or_every_example():
    spec = spec_from_mapping({"name": "x", "tasks": ["a"], "total_rows": 10})
    a, b = _task("a", 30), _task("b", 10)
    allot_rows(MixNode(Submix(name="root"), [a, b], []), spec)
    assert (a.planned, b.planned) == (8, 2)  # 7.5 / 2.5: the tie goes to the first member
    a.selected = np.arange(10)  # a cap kept 10 rows: the rate counts the selected source rows
    allot_rows(MixNode(Submix(name="root"), [a, b], []), spec)
    assert (a.planned, b.planned) == (5, 5)


def test_a_manifest_missing_a_key_is_one_located_line(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 1, "name": "x"}))
    with pytest.raises(MixtureError) as err:
        Mixture.open(tmp_path)
    assert "manifest.json is incomplete: flanmix_version: missing" in str(err.value)
    assert "\n" not in err.value.message and err.value.location.file == str(tmp_path / MANIFEST)
    assert Mixture.open(tmp_path, validate=False).manifest["name"] == "x"
    assert "splits.train.shards.0.sha256: missing" in manifest_errors(
        {"splits": {"train": {"rows": 1, "shards": [{"file": "a", "rows": 1}]}}}
    )
