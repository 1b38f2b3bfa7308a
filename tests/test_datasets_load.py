"""What users load with ``datasets.load_dataset(FOLDER)``: every export format and file format,
a recompiled mixture (new rows, not the cache's old ones) and a leave-one-cluster-out root."""

from __future__ import annotations

import pytest

from flanmix.compile import compile_mixture
from flanmix.export import FORMATS, SCHEMAS, export_mixture
from flanmix.mixture import SCHEMA, Mixture
from tests.test_mix import FIXTURE, make_spec


@pytest.fixture(scope="module")
def catalog():
    from flanmix.catalog import load_catalog

    return load_catalog(FIXTURE)


@pytest.fixture(scope="module")
def mixture(tmp_path_factory, catalog):
    out = tmp_path_factory.mktemp("load") / "mix"
    compile_mixture(make_spec(), out, catalog=catalog, workers=1, offline=True, base_dir=out.parent)
    mix = Mixture.open(out)
    # the case that broke JSON type inference: metrics null in every train row, lists in eval
    assert all(r["metrics"] is None for r in mix.iter_rows("train"))
    assert any(r["metrics"] for r in mix.iter_rows("eval"))
    return out


def _load(path, tmp_path, *args):
    import datasets

    return datasets.load_dataset(str(path), *args, cache_dir=str(tmp_path / "hf_cache"))


@pytest.mark.parametrize("file_format", ["parquet", "jsonl"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_export_loads_with_declared_features(tmp_path, mixture, fmt, file_format):
    import datasets

    dest = tmp_path / "dest"
    export_mixture(mixture, dest, fmt=fmt, file_format=file_format)
    ds = _load(dest, tmp_path)
    mix = Mixture.open(mixture)
    assert {s: ds[s].num_rows for s in ds} == {s: mix.num_rows(s) for s in ("train", "eval")}
    want = datasets.Features.from_arrow_schema(SCHEMAS.get(fmt) or SCHEMA)
    for split in ("train", "eval"):
        assert ds[split].features == want  # the card's features, identical in both splits
        assert ds[split]["task"] == [r["task"] for r in mix.iter_rows(split)]
        assert ds[split]["cluster"] == [r["cluster"] for r in mix.iter_rows(split)]


def test_recompile_overwrite_then_load_gives_the_new_rows(tmp_path, catalog):
    out = tmp_path / "mix"
    compile_mixture(make_spec(), out, catalog=catalog, workers=1, offline=True, base_dir=tmp_path)
    first = _load(out, tmp_path)["train"]["example_id"]
    compile_mixture(
        make_spec(seed=7),
        out,
        catalog=catalog,
        workers=1,
        offline=True,
        base_dir=tmp_path,
        overwrite=True,
    )
    second = _load(out, tmp_path)["train"]["example_id"]
    assert second != first
    assert second == [r["example_id"] for r in Mixture.open(out).iter_rows("train")]


def test_leave_one_cluster_out_root(tmp_path, catalog, capsys):
    """One datasets config per held-out cluster, no default; inspect and verify cover every
    mixture; export and train name the mixtures to pick from."""
    from flanmix.cli import main
    from flanmix.errors import FlanmixError

    root = tmp_path / "loco"
    spec = make_spec(
        holdout={"leave_one_cluster_out": True, "on_overlap": "allow"},
        clusters=["nli", "sentiment", "qa"],
    )
    compile_mixture(spec, root, catalog=catalog, workers=1, offline=True, base_dir=tmp_path)
    for cluster in ("nli", "sentiment", "qa"):
        ds = _load(root, tmp_path, cluster)
        mix = Mixture.open(root / cluster)
        for split in ("train", "eval"):
            assert ds[split]["example_id"] == [r["example_id"] for r in mix.iter_rows(split)]
        assert set(ds["eval"]["cluster"]) == {cluster}
        assert cluster not in set(ds["train"]["cluster"])
    with pytest.raises(ValueError, match="Config name is missing"):  # never all mixtures merged
        _load(root, tmp_path)

    assert main(["verify", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("OK (") == 3 and "3 of 3 mixtures OK" in out
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert all(f"held out: {c}" in out for c in ("nli", "sentiment", "qa"))
    next((root / "sentiment").glob("train-*.parquet")).write_bytes(b"changed")
    assert main(["verify", str(root)]) == 1
    assert f"failed: {root / 'sentiment'}" in capsys.readouterr().out

    with pytest.raises(FlanmixError, match="leave-one-cluster-out root holding 3 mixtures") as err:
        Mixture.open(root)
    assert str(root / "nli") in str(err.value) and "manifest.json is missing" not in str(err.value)
    assert main(["export", str(root), "-o", str(tmp_path / "x")]) == 2
    assert "leave-one-cluster-out root" in capsys.readouterr().err
