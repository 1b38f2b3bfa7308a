"""The writer: real files round-trip through datasets, determinism across worker counts, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flanmix.catalog import load_catalog
from flanmix.cli import main
from flanmix.compile import compile_mixture
from flanmix.errors import CompileError
from flanmix.mixture import MANIFEST, Mixture
from tests.test_mix import FIXTURE, make_spec, write_sources

STALLED = Path(__file__).resolve().parent / "stalled_compile.py"  # the kill tests' compile


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(FIXTURE)


def _spec(sources, **kw):
    base = dict(
        cap=1500,
        total_rows=None,
        sources=sources,
        holdout={"clusters": ["qa"]},
        formats={"few_shot": 0.3, "options": 0.8, "options_style": "varied"},
        templates={"mode": "random", "inverted": 0.3},
        output={"shard_rows": 900},
    )
    base.update(kw)
    return make_spec(**base)


def test_round_trip_through_datasets_load_dataset(tmp_path, catalog):
    import datasets

    sources = write_sources(tmp_path / "src", n=1200, n_eval=40)
    manifest = compile_mixture(
        _spec(sources), tmp_path / "out", catalog=catalog, workers=1, base_dir=tmp_path
    )
    mix = Mixture.open(tmp_path / "out")
    assert mix.verify() == []
    assert len(mix.shards("train")) > 1 and manifest["splits"]["train"]["rows"] == mix.num_rows(
        "train"
    )
    loaded = datasets.load_dataset(str(tmp_path / "out"), cache_dir=str(tmp_path / "hf_cache"))
    assert set(loaded) == {"train", "eval"}
    for split in ("train", "eval"):
        ours = list(mix.iter_rows(split))
        theirs = loaded[split].to_list()
        assert ours == theirs and len(ours) == mix.num_rows(split)
        ids = [r["example_id"] for r in ours]
        assert len(set(ids)) == len(ids)
    counts = manifest["counts"]["train"]
    assert sum(counts["task"].values()) == manifest["splits"]["train"]["rows"]
    assert manifest["tasks"]["train:ent"]["source"].startswith("local:")
    assert (tmp_path / "out" / "stats.json").exists()


def test_arrow_output_format(tmp_path, catalog):
    import datasets

    spec = make_spec(output={"format": "arrow"})
    compile_mixture(
        spec, tmp_path / "out", catalog=catalog, workers=1, offline=True, base_dir=tmp_path
    )
    mix = Mixture.open(tmp_path / "out")
    assert mix.files("train")[0].suffix == ".arrow" and mix.verify() == []
    assert datasets.load_dataset(str(tmp_path / "out"), cache_dir=str(tmp_path / "c"))[
        "train"
    ].num_rows == mix.num_rows("train")


def test_byte_identical_with_one_and_two_workers(tmp_path, catalog):
    sources = write_sources(tmp_path / "src", n=12_000, n_eval=100)
    spec = _spec(sources, cap=12_000)
    m1 = compile_mixture(spec, tmp_path / "w1", catalog=catalog, workers=1, base_dir=tmp_path)
    m2 = compile_mixture(spec, tmp_path / "w2", catalog=catalog, workers=2, base_dir=tmp_path)
    assert len(m1["splits"]["train"]["shards"]) > 1
    assert m1["splits"] == m2["splits"]  # names, rows and sha256 of every shard
    assert (tmp_path / "w1" / MANIFEST).read_bytes() == (tmp_path / "w2" / MANIFEST).read_bytes()
    m3 = compile_mixture(
        spec.model_copy(update={"seed": 1}),
        tmp_path / "w3",
        catalog=catalog,
        workers=1,
        base_dir=tmp_path,
    )
    assert (
        m3["splits"]["train"]["shards"][0]["sha256"] != m1["splits"]["train"]["shards"][0]["sha256"]
    )


def _fail_after_rendering(monkeypatch):
    """Every unit rendered into pieces, then a failure before any shard is written."""
    import flanmix.compile

    def fail(*_args):
        raise CompileError("injected failure after rendering")

    monkeypatch.setattr(flanmix.compile, "_stats_from", fail)


def test_injected_failure_publishes_nothing(tmp_path, catalog, monkeypatch):
    _fail_after_rendering(monkeypatch)
    with pytest.raises(CompileError, match="injected"):
        compile_mixture(
            make_spec(),
            tmp_path / "out",
            catalog=catalog,
            workers=1,
            offline=True,
            base_dir=tmp_path,
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite_and_survives_failure(tmp_path, catalog, monkeypatch):
    out = tmp_path / "out"
    first = compile_mixture(
        make_spec(), out, catalog=catalog, workers=1, offline=True, base_dir=tmp_path
    )
    with pytest.raises(CompileError, match="exists"):
        compile_mixture(
            make_spec(), out, catalog=catalog, workers=1, offline=True, base_dir=tmp_path
        )
    with monkeypatch.context() as patched, pytest.raises(CompileError, match="injected"):
        _fail_after_rendering(patched)
        compile_mixture(
            make_spec(seed=5),
            out,
            catalog=catalog,
            workers=1,
            offline=True,
            base_dir=tmp_path,
            overwrite=True,
        )
    assert Mixture.open(out).manifest["splits"] == first["splits"]  # the old mixture is intact
    second = compile_mixture(
        make_spec(seed=5),
        out,
        catalog=catalog,
        workers=1,
        offline=True,
        base_dir=tmp_path,
        overwrite=True,
    )
    assert second["seed"] == 5 and Mixture.open(out).verify() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_killed_compile_leaves_nothing_and_rerun_succeeds(tmp_path):
    sources = write_sources(tmp_path / "src", n=60_000, n_eval=100)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        textwrap.dedent(f"""\
        name: killed
        catalog: {FIXTURE}
        clusters: all
        cap: 60000
        holdout: {{clusters: [qa]}}
        sources: {json.dumps(sources)}
        output: {{shard_rows: 20000}}
        """)
    )
    out = tmp_path / "out"
    cmd = ["compile", str(spec_file), "-o", str(out), "--workers", "2"]
    base_env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    # kill it while workers render, after the shards are written, and with the manifest written
    # but not yet published: each time nothing may look complete
    for stage in ("pieces", "shards", "publish"):
        marker = tmp_path / f"stalled-{stage}"
        proc = subprocess.Popen(
            [sys.executable, str(STALLED), stage, str(marker), *cmd],
            env=base_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"compile never reached {stage}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        marker.unlink()
        assert not out.exists()
        with pytest.raises(Exception, match="missing|no such"):
            Mixture.open(out)
    cli = [sys.executable, "-m", "flanmix.cli", *cmd, "--quiet"]
    done = subprocess.run(cli, env=base_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    mix = Mixture.open(out)
    assert mix.verify() == [] and mix.num_rows("train") > 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out",
        "spec.yaml",
        "src",
    ]  # stale temp dirs removed


def test_cli_compile_inspect_verify(tmp_path, capsys):
    spec_file = tmp_path / "mix.yaml"
    spec_file.write_text(
        f"name: cli\ncatalog: {FIXTURE}\nclusters: all\ntotal_rows: 200\nholdout: {{clusters: [qa]}}\n"
    )
    out = tmp_path / "out"
    assert main(["compile", str(spec_file), "-o", str(out), "--offline", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "samples (offline)" in text and "by cluster" in text and "train: " in text
    assert main(["inspect", str(out), "--plot", str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").stat().st_size > 1000
    capsys.readouterr()
    (tmp_path / "thesis.pdf").write_text("mine")  # an existing file is never replaced
    for bad, why in (
        ("thesis.pdf", "exists: not replacing it"),
        ("x.tex", "cannot plot to a .tex"),
    ):
        assert main(["inspect", str(out), "--plot", str(tmp_path / bad)]) == 2
        captured = capsys.readouterr()
        assert why in captured.err and "Traceback" not in captured.err
        assert not captured.out  # refused before the report
    assert (tmp_path / "thesis.pdf").read_text() == "mine"
    assert main(["inspect", str(out), "--plot", str(tmp_path / "chart")]) == 0  # .png added
    assert f"plot saved to {tmp_path / 'chart.png'}" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0
    shard = Mixture.open(out).files("train")[0]
    shard.write_bytes(shard.read_bytes() + b"x")
    assert main(["verify", str(out)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().out
    assert (
        main(["compile", str(spec_file), "-o", str(out), "--offline"]) == 2
    )  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_leave_one_cluster_out(tmp_path, catalog):
    spec = make_spec(
        holdout={"leave_one_cluster_out": True, "on_overlap": "allow"},
        clusters=["nli", "sentiment", "qa"],
    )
    index = compile_mixture(
        spec, tmp_path / "loco", catalog=catalog, workers=1, offline=True, base_dir=tmp_path
    )
    assert set(index["mixtures"]) == {"nli", "sentiment", "qa"}
    for cluster in index["mixtures"]:
        mix = Mixture.open(tmp_path / "loco" / cluster)
        assert {r["cluster"] for r in mix.iter_rows("eval", ["cluster"])} == {cluster}
        assert cluster not in {r["cluster"] for r in mix.iter_rows("train", ["cluster"])}
    assert (
        json.loads((tmp_path / "loco" / "loco.json").read_text())["kind"] == "leave_one_cluster_out"
    )


def test_leave_one_cluster_out_is_published_whole(tmp_path, catalog, monkeypatch):
    """A failure in one of the held-out mixtures leaves no OUT at all; submix clusters count."""
    import flanmix.compile as write

    spec = make_spec(
        holdout={"leave_one_cluster_out": True, "on_overlap": "allow"},
        clusters=[],
        submixes=[{"name": "a", "clusters": ["nli"]}, {"name": "b", "clusters": ["sentiment"]}],
    )
    real = write._compile_one
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise CompileError("injected failure in the second mixture")
        return real(*args, **kwargs)

    monkeypatch.setattr(write, "_compile_one", fail_second)
    with pytest.raises(CompileError, match="injected"):
        compile_mixture(
            spec, tmp_path / "loco", catalog=catalog, workers=1, offline=True, base_dir=tmp_path
        )
    assert len(calls) == 2  # the clusters of both submixes were found
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT, no temporary folder
    monkeypatch.setattr(write, "_compile_one", real)
    index = compile_mixture(
        spec, tmp_path / "loco", catalog=catalog, workers=1, offline=True, base_dir=tmp_path
    )
    assert set(index["mixtures"]) == {"nli", "sentiment"}


def test_tasks_without_rows_for_a_split_are_reported(tmp_path):
    """The bundled library has an eval-only task (WSC273): the manifest says so."""
    from flanmix.report import composition_report

    spec = Path(__file__).resolve().parent.parent / "mixtures" / "small_offline.yaml"
    manifest = compile_mixture(spec, tmp_path / "out", offline=True, workers=1)
    assert manifest["skipped_tasks"]["train:wsc273"].startswith("no training split")
    assert "no train rows from wsc273" in composition_report(tmp_path / "out")


def test_composition_plot_has_train_and_eval_per_cluster_format_task_with_values(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flanmix.report import composition_figure

    spec = make_spec(holdout={"clusters": ["qa"]}, total_rows=200)
    catalog = load_catalog(FIXTURE)
    manifest = compile_mixture(
        spec, tmp_path / "out", catalog=catalog, workers=1, offline=True, base_dir=tmp_path
    )
    fig = composition_figure(manifest, plt)
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split(" (")[0] for t in titles] == [
        f"{split}: rows per {key}"
        for split in ("train", "eval")
        for key in ("cluster", "format", "task")
    ]
    for ax, (split, key) in zip(
        fig.axes,
        [(s, k) for s in ("train", "eval") for k in ("cluster", "format", "task")],
        strict=True,
    ):
        labels = sorted(t.get_text() for t in ax.texts)  # the value written on each bar
        assert labels == sorted(f"{n:,}" for n in manifest["counts"][split][key].values())
    plt.close(fig)
