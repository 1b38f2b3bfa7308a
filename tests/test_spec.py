"""Mixture spec files: pydantic validation with errors located at file:line, and the bundled specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from flanmix.errors import SpecError
from flanmix.spec import MixtureSpec, load_spec

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mix.yaml"
    path.write_text(text)
    return path


def test_bundled_specs_validate():
    names = sorted(p.name for p in (REPO / "mixtures").glob("*.yaml"))
    assert {"flan2021.yaml", "small_offline.yaml"} <= set(names)
    for name in names:
        spec, _ = load_spec(REPO / "mixtures" / name)
        assert isinstance(spec, MixtureSpec)


@pytest.mark.parametrize(
    ("text", "line", "message", "hint"),
    [
        (
            "name: m\nclusters: [nli]\nholdout:\n  clustres: [nli]\n",
            4,
            "unknown key 'clustres'",
            "did you mean 'clusters'",
        ),
        ("name: m\nclusters: [nli]\ncap: 0\n", 3, "greater than or equal to 1", None),
        (
            "name: m\nclusters: [nli]\nformats:\n  options_style: fancy\n",
            4,
            "'flan' or 'varied'",
            None,
        ),
        ("name: m\nclusters: [nli]\ntemplates: {inverted: 1.5}\n", 3, "fraction", None),
        ("name: Bad Name\nclusters: [nli]\n", 1, "pattern", None),
        ("name: m\n", 1, "empty mixture", None),
        ("name: m\nclusters: [nli]\nclusters: [qa]\n", 3, "duplicate key", None),
        ("name: m\nclusters: [nli\n", None, "YAML syntax error", None),
    ],
)
def test_spec_errors_are_located(tmp_path, text, line, message, hint):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    shown = str(err.value)
    assert str(path) in shown and message in shown
    if line is not None:
        assert f"{path}:{line}" in shown
    if hint:
        assert hint in shown


def test_submix_keys_are_checked(tmp_path):
    path = write(tmp_path, "name: m\nsubmixes:\n  - name: a\n    tasks: [rte]\n    wieght: 2\n")
    with pytest.raises(SpecError, match="unknown key 'wieght'") as err:
        load_spec(path)
    assert f"{path}:5" in str(err.value) and "weight" in str(err.value)


def test_plan_errors_point_at_the_spec_line(tmp_path):
    """Errors found while planning (unknown names) carry the spec file's line, like schema errors."""
    from flanmix.catalog import load_catalog
    from flanmix.compile import compile_mixture

    from .test_mix import FIXTURE

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: bad\nclusters: all\nholdout:\n  clusters: [nli, sentimnt]\n")
    with pytest.raises(SpecError) as info:
        compile_mixture(spec, tmp_path / "out", catalog=load_catalog(FIXTURE), offline=True)
    loc = info.value.location
    assert (loc.file, loc.line, loc.field) == (str(spec), 4, "holdout.clusters[1]")
    assert "did you mean 'sentiment'" in str(info.value)
    assert not (tmp_path / "out").exists()


WEIGHT_SPEC = "name: m\nclusters: [nli]\nmixing:\n  method: weights\n  {key}: {value}\n"


@pytest.mark.parametrize(
    ("key", "value", "field", "message"),
    [
        (
            "default_weight",
            ".inf",
            "mixing.default_weight",
            "must be a finite number >= 0, got inf",
        ),
        (
            "default_weight",
            ".nan",
            "mixing.default_weight",
            "must be a finite number >= 0, got nan",
        ),
        ("default_weight", "-1", "mixing.default_weight", "must be a finite number >= 0, got -1"),
        ("weights", "{rte: .inf}", "mixing.weights", "weight of 'rte' must be a finite number"),
        ("weights", "{rte: .nan}", "mixing.weights", "weight of 'rte' must be a finite number"),
        ("weights", "{rte: 1e308, anli: 1e308}", "mixing.weights", "weights sum to more than"),
    ],
)
def test_weights_are_finite_and_their_sum_too(tmp_path, key, value, field, message):
    path = write(tmp_path, WEIGHT_SPEC.format(key=key, value=value))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    loc = err.value.location
    assert (loc.file, loc.line, loc.field) == (str(path), 5, field), str(err.value)
    assert message in str(err.value)


def test_submix_weight_is_finite(tmp_path):
    path = write(tmp_path, "name: m\nsubmixes:\n  - name: a\n    tasks: [rte]\n    weight: .inf\n")
    with pytest.raises(SpecError, match="weight must be a finite number >= 0, got inf") as err:
        load_spec(path)
    assert f"{path}:5" in str(err.value)


def test_weights_near_the_float_maximum_plan_by_their_ratios(tmp_path):
    """Finite weights whose products with the row count overflow (1e308) are planned by ratio,
    not an OverflowError."""
    from flanmix.catalog import load_catalog
    from flanmix.plan import _largest_remainder, plan_mixture
    from flanmix.spec import spec_from_mapping

    from .test_mix import FIXTURE

    assert _largest_remainder(10, [1e308, 1.0]) == [10, 0]
    assert _largest_remainder(10, [1e308, 1e308 / 4]) == [8, 2]
    assert _largest_remainder(10, [3.0, 1.0]) == [8, 2]
    spec = spec_from_mapping(
        {
            "name": "t",
            "clusters": "all",
            "holdout": {"clusters": ["qa"]},
            "total_rows": 300,
            "mixing": {"method": "weights", "weights": {"ent": 1e308}, "default_weight": 1e308},
        }
    )
    plan = plan_mixture(spec, load_catalog(FIXTURE), base_dir=tmp_path, offline=True)
    planned = {tp.task: tp.planned for tp in plan.tasks.values() if tp.role == "train"}
    assert sum(planned.values()) == 300 and planned["ent"] > 0
