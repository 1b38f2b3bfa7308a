"""Seeded draws: independent named decisions, an unbiased template choice, redrawn skips, named
options styles, rates of mode "all", duplicate template ids, sampling_version.

Uses the fixture library of tests/test_mix.py (tests/fixtures/mix).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import yaml

from flanmix.catalog import load_catalog
from flanmix.compile import compile_mixture
from flanmix.errors import CompileError, FlanmixError, SpecError, TaskFileError
from flanmix.lint import lint_paths
from flanmix.mixture import Mixture
from flanmix.plan import plan_mixture
from flanmix.render import example_seed
from flanmix.rows import choose_templates
from flanmix.sampling import SAMPLING_VERSION, draw, options_block, pick, uniform
from tests.test_mix import FIXTURE, compile_, make_spec, write_sources


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(FIXTURE)


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with df degrees of freedom (regularised gamma)."""
    a, z = df / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    if z < a + 1:  # series for the lower function
        term = total = 1.0 / a
        n = 1
        while term > total * 1e-15:
            term *= z / (a + n)
            total += term
            n += 1
        return 1.0 - total * math.exp(-z + a * math.log(z) - math.lgamma(a))
    # continued fraction for the upper function (Lentz)
    b, c, d = z + 1.0 - a, 1e300, 1.0 / (z + 1.0 - a)
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(-z + a * math.log(z) - math.lgamma(a)) * h


def test_chi2_sf_matches_known_values():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-6)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, rel=1e-6)
    assert chi2_sf(2.0, 4) == pytest.approx(0.7357588823428847, rel=1e-9)


NORMAL = [f"n{i}" for i in range(8)]
INVERTED = ["i0", "i1"]


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.5])
def test_template_choice_is_unbiased_chi_square(ratio):
    """100k draws: turned-around group with probability `ratio`, uniform within each group."""
    n = 100_000
    counts = Counter(
        choose_templates(
            example_seed(0, "task", "#draw", "train", i * 1_000_003),
            NORMAL + INVERTED,
            NORMAL,
            INVERTED,
            ratio,
            "random",
            i,
        )[0]
        for i in range(n)
    )
    expected = {t: n * (1 - ratio) / len(NORMAL) for t in NORMAL}
    expected |= {t: n * ratio / len(INVERTED) for t in INVERTED}
    stat = sum((counts[t] - e) ** 2 / e for t, e in expected.items())
    p = chi2_sf(stat, len(expected) - 1)
    assert p > 0.01, (ratio, p, counts)


def test_named_draws_are_independent():
    """The options decision does not depend on the template drawn from the same base."""
    table = Counter()
    for i in range(40_000):
        h = example_seed(1, "t", "x", "train", i)
        table[(draw(h, "template") % 4, uniform(h, "options") < 0.5)] += 1
    rows = [[table[(t, o)] for o in (False, True)] for t in range(4)]
    total = sum(map(sum, rows))
    stat = 0.0
    for t in range(4):
        for o in range(2):
            e = sum(rows[t]) * sum(r[o] for r in rows) / total
            stat += (rows[t][o] - e) ** 2 / e
    assert chi2_sf(stat, 3) > 0.01


def test_pick_is_stable_when_names_are_added():
    """Rendezvous hashing: adding a name changes only the draws the new name wins."""
    old, new = ["dash", "letter_paren"], ["dash", "letter_paren", "number_dot"]
    changed = 0
    for i in range(6000):
        h = example_seed(0, "t", "x", "train", i)
        a, b = pick(h, "marker", old), pick(h, "marker", new)
        if a != b:
            assert b == "number_dot"
            changed += 1
    assert 0.28 < changed / 6000 < 0.39


def test_options_styles_named_in_the_spec(tmp_path, catalog):
    spec = make_spec(
        formats={"options": 1.0, "options_styles": ["letter_paren"], "options_headers": ["choices"]},
        total_rows=200, tasks=["senti"], clusters=[], templates={"inverted": False},
    )  # fmt: skip
    compile_(spec, tmp_path / "out", catalog)
    rows = list(Mixture.open(tmp_path / "out").iter_rows("train"))
    assert {r["targets"] for r in rows} == {"(A)", "(B)"}
    assert all("\n\nChoices:\n(A) " in r["inputs"] for r in rows)
    assert options_block(("x", "y"), ("choices", "flan"))[0] == "\n\nOPTIONS:\n- x\n- y"
    with pytest.raises(SpecError, match="unknown options style 'roman'"):
        make_spec(formats={"options_styles": ["roman"]})


def test_skipped_rows_are_redrawn_until_the_planned_count(tmp_path, catalog):
    """ent.write_hyp skips every label-1 row: the draw is redrawn on another row, same template."""
    spec = make_spec(
        tasks=["ent"], clusters=[], holdout={}, total_rows=400, cap=None,
        templates={"mode": "random", "inverted": 0.5},
    )  # fmt: skip
    manifest = compile_(spec, tmp_path / "out", catalog)
    rows = list(Mixture.open(tmp_path / "out").iter_rows("train"))
    assert len(rows) == manifest["tasks"]["train:ent"]["planned"] == 400
    assert "shortfall" not in manifest["tasks"]["train:ent"]
    assert manifest["redrawn"]["train"]["ent"] > 50
    inverted = Counter(r["inverted"] for r in rows)
    assert 0.4 < inverted[True] / len(rows) < 0.6  # the turned-around share is kept
    assert len({r["example_id"] for r in rows}) == len(rows)
    assert manifest["sampling_version"] == SAMPLING_VERSION


def test_shortfall_reported_when_no_row_can_replace(tmp_path, catalog):
    spec = make_spec(
        tasks=["ent", "senti"], clusters=[], holdout={}, total_rows=120, cap=None,
        templates={"mode": "random", "inverted": 1.0},
        sources={"ent": str(_only_label(tmp_path, 1))},
    )  # fmt: skip
    manifest = compile_(spec, tmp_path / "out", catalog, offline=False, tmp_path=tmp_path)
    info = manifest["tasks"]["train:ent"]
    assert info["rows"] == 0 and info["shortfall"] == info["planned"] > 0
    assert manifest["dropped"]["train"] == {"needs an entailed pair": info["planned"]}


def _only_label(tmp_path: Path, label: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "ent1"
    folder.mkdir()
    table = {
        "premise": [f"premise {i} is long" for i in range(20)],
        "hypothesis": [f"h {i}" for i in range(20)],
        "label": [label] * 20,
    }
    pq.write_table(pa.table(table), folder / "train.parquet")
    return folder


def test_mode_all_rates_count_source_rows(tmp_path, catalog):
    """A task's rate is min(rows, max_rate), not rows x templates: the same shares of examples as
    mode random (each draw then gives every template)."""
    sources = write_sources(tmp_path / "src", n=1000)
    small = tmp_path / "small"
    small.mkdir()
    import pyarrow.parquet as pq

    pq.write_table(
        pq.read_table(Path(sources["senti"]) / "train.parquet").slice(0, 50),
        small / "train.parquet",
    )
    sources["senti"] = str(small)
    shares = {}
    for mode in ("random", "all"):
        spec = make_spec(
            clusters=["nli", "sentiment"], holdout={}, cap=None, total_rows=None,
            mixing={"max_rate": 500}, sources=sources, templates={"mode": mode},
        )  # fmt: skip
        plan = plan_mixture(spec, catalog, base_dir=tmp_path)
        planned = {tp.task: tp.planned for tp in plan.tasks.values()}
        shares[mode] = planned["senti"] / (planned["senti"] + planned["ent"])
    assert shares["random"] == pytest.approx(50 / 550, abs=0.01)
    assert shares["all"] == pytest.approx(shares["random"], abs=0.01)


def test_duplicate_template_ids_fail_lint_catalog_and_compile(tmp_path):
    lib = tmp_path / "lib"
    (lib / "task_templates" / "sentiment").mkdir(parents=True)
    (lib / "clusters.yaml").write_text("clusters:\n  sentiment: {tasks: [senti]}\n")
    data = yaml.safe_load((FIXTURE / "task_templates/sentiment/senti.yaml").read_text())
    data["templates"][1]["id"] = data["templates"][0]["id"]
    path = lib / "task_templates/sentiment/senti.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    report = lint_paths([lib / "task_templates"])
    (finding,) = [f for f in report.findings if f.code == "schema"]
    assert "template id 'review' is used twice" in finding.message and finding.line
    with pytest.raises(TaskFileError, match="used twice"):
        load_catalog(lib)
    spec = lib / "spec.yaml"
    spec.write_text("name: d\ntasks: [senti]\ncatalog: .\n")
    with pytest.raises(FlanmixError, match="used twice") as err:
        compile_mixture(spec, tmp_path / "out", workers=1, offline=True)
    assert "senti.yaml" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_compile_error_class_is_located():
    assert issubclass(TaskFileError, FlanmixError) and issubclass(CompileError, FlanmixError)


def test_pick_many_is_pick_for_every_base():
    """The vectorised draws of a unit give exactly :func:`pick`'s and :func:`uniform`'s answers."""
    import random

    from flanmix.sampling import (
        VARIED_HEADERS,
        VARIED_MARKERS,
        pick,
        pick_many,
        uniform,
        uniform_many,
    )

    rng = random.Random(7)
    bases = [rng.getrandbits(64) for _ in range(5000)] + [0, 1 << 63, (1 << 64) - 1]
    for name, names in (
        ("marker", VARIED_MARKERS),
        ("header", VARIED_HEADERS),
        ("x", ("a",)),
        ("y", ("b", "a", "b")),
    ):
        assert pick_many(bases, name, names) == [pick(b, name, names) for b in bases]
    with pytest.raises(ValueError):
        pick_many([1], "x", ())
    for name in ("options", "few_shot"):
        assert uniform_many(bases, name) == [uniform(b, name) for b in bases]
    assert uniform_many([], "options") == []


def test_exemplar_draws_are_random_randrange_draws():
    """A renderer's exemplar picks re-seed one generator and write ``randrange``'s loop out: the
    same picks as a fresh ``random.Random(draw(seed, "exemplars")).randrange(n)`` per row."""
    import random
    from types import SimpleNamespace

    from flanmix.rows import UnitRenderer

    def reference(base, group, b, rseed, k):  # with random.Random: first picks of new rows
        rng = random.Random(draw(rseed, "exemplars"))
        draws = [group[rng.randrange(len(group))] for _ in range(min(4 * k, 4 * len(group)))]
        first: dict[int, int] = {}
        for g in draws:
            first.setdefault(base[g].index, g)
        return [g for index, g in first.items() if index != base[b].index][:k]

    rng = random.Random(3)
    for k in (1, 2, 4, 16):
        renderer = SimpleNamespace(
            ctx=SimpleNamespace(spec=SimpleNamespace(formats=SimpleNamespace(k=k))),
            _rng=random.Random(),
        )
        for n in (1, 2, 3, 5, 8, 64, 555, 1000):
            base = [SimpleNamespace(index=rng.randrange(max(1, n // 2))) for _ in range(n)]
            group = list(range(n))
            for _ in range(20):
                b, rseed = rng.randrange(n), rng.getrandbits(64)
                got = UnitRenderer._exemplar_pool(renderer, base, group, b, rseed)
                assert got == reference(base, group, b, rseed, k)


def test_joined_strings_joins_parts_in_order_long_rows_and_short():
    import pyarrow as pa

    from flanmix.rows import LONG_ROW_CHARS, joined_strings

    shared = "ç☃" * LONG_ROW_CHARS  # long rows take the straight path; a part shared by rows
    for rows in (
        [("é", "x"), "", ("ab", "", "ç☃"), "q"],
        [(shared, "é", "x"), ("",), (shared, "ab", "", shared), "q" * LONG_ROW_CHARS],
    ):
        order = [2, 0, 1, 3, 2]
        got = joined_strings(rows, order)
        assert got.type == pa.string()
        assert got.to_pylist() == ["".join(rows[i]) for i in order]  # a str joins to itself
        got.validate(full=True)
        assert joined_strings(rows, []).to_pylist() == []
    assert joined_strings([(), (shared,)], [0, 1]).to_pylist() == ["", shared]
