"""The leave-one-cluster-out root index (``loco.json``) as a typed model, and the typed manifest
read by the card and the report: a broken index is one located line from every command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flanmix.card import loco_card, mixture_card
from flanmix.catalog import load_catalog
from flanmix.cli import main
from flanmix.compile import compile_mixture
from flanmix.errors import MixtureError
from flanmix.mixture import LOCO_INDEX, LocoIndex, Manifest, Mixture, loco_mixtures, open_loco
from tests.test_mix import FIXTURE, make_spec

CLUSTERS = ["nli", "sentiment", "qa"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A compiled leave-one-cluster-out root; tests that break it work on a copy."""
    out = tmp_path_factory.mktemp("loco") / "root"
    spec = make_spec(
        holdout={"leave_one_cluster_out": True, "on_overlap": "allow"},
        clusters=CLUSTERS,
        total_rows=60,
    )
    index = compile_mixture(
        spec, out, catalog=load_catalog(FIXTURE), workers=1, offline=True, base_dir=out.parent
    )
    return out, index


def _broken(root, tmp_path: Path, change) -> Path:
    out = tmp_path / "root"
    shutil.copytree(root[0], out)
    data = json.loads((out / LOCO_INDEX).read_text())
    text = change(data)
    (out / LOCO_INDEX).write_text(text if isinstance(text, str) else json.dumps(data, indent=2))
    return out


def test_the_index_is_typed_on_open(root):
    out, index = root
    loco = open_loco(out)
    assert isinstance(loco, LocoIndex)
    assert loco.model_dump() == index  # the writer's dict, nothing added or lost
    assert list(loco.mixtures) == CLUSTERS
    for cluster, entry in loco.mixtures.items():
        info = Mixture.open(out / entry.path).info
        assert info.holdout is not None and info.holdout.clusters == [cluster]
        assert entry.train_rows == info.splits["train"].rows
        assert entry.eval_rows == info.splits["eval"].rows
    assert loco_mixtures(out) == {c: out / c for c in CLUSTERS}
    assert open_loco(out / "nli") is None and loco_mixtures(out / "nli") == {}


def test_cards_read_the_typed_models_and_write_what_the_dicts_gave(root):
    out, index = root
    manifests = {c: json.loads((out / c / "manifest.json").read_text()) for c in CLUSTERS}
    typed = {c: Manifest.of(m) for c, m in manifests.items()}
    assert (out / "README.md").read_text() == loco_card(index, manifests)
    assert loco_card(LocoIndex.of(index), typed) == loco_card(index, manifests)
    for c in CLUSTERS:
        assert (out / c / "README.md").read_text() == mixture_card(typed[c])


def _drop_train_rows(d):
    del d["mixtures"]["sentiment"]["train_rows"]


def _escape(d):
    d["mixtures"]["qa"]["path"] = "../elsewhere"


def _version(d):
    d["format_version"] = 99


def _no_mixtures(d):
    d["mixtures"] = {}


BROKEN = {
    "missing key": (_drop_train_rows, "invalid leave-one-cluster-out index: mixtures.sentiment.train_rows: missing"),
    "path outside": (_escape, "mixtures.qa.path: must be a folder name inside the root"),
    "version": (_version, "format version 99 is not supported"),
    "no mixtures": (_no_mixtures, "invalid leave-one-cluster-out index: mixtures: "),
    "not an object": (lambda d: "[1, 2]", "loco.json is not a JSON object (it holds an array)"),
    "null": (lambda d: "null", "loco.json is not a JSON object (it holds null)"),
    "too deep": (lambda d: "[" * 100000 + "]" * 100000, "unreadable leave-one-cluster-out index: JSON nested too deep"),
    "bad JSON": (lambda d: '{\n  "kind": "leave_one_cluster_out",\n  oops\n}', "loco.json:3: unreadable leave-one-cluster-out index: Expecting"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN))
@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_a_broken_index_is_one_located_line(root, tmp_path, capsys, case, command):
    change, expected = BROKEN[case]
    out = _broken(root, tmp_path, change)
    assert main([command, str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith("flanmix ") and str(out / LOCO_INDEX) in first, err
    assert expected in first, err
    with pytest.raises(MixtureError, match="leave-one-cluster-out index|loco.json"):
        Mixture.open(out)  # the root is refused for what it is, or for its broken index


def test_the_report_refuses_a_manifest_without_a_holdout(tmp_path, root, capsys):
    mix = tmp_path / "nli"
    shutil.copytree(root[0] / "nli", mix)
    m = json.loads((mix / "manifest.json").read_text())
    m["holdout"] = None  # valid for a hand-written mixture, but inspect reports the holdout
    (mix / "manifest.json").write_text(json.dumps(m))
    assert main(["inspect", str(mix)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "manifest.json is incomplete: no 'holdout'" in err
