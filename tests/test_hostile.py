"""Hostile inputs (issue 12): what a file, a template, a spec or a flag may do to the machine.

One section per class of attack, worst first: data loss, code execution, denial of service,
tampered data, reads outside the library, tracebacks. Anything that could hang or eat memory
runs in a subprocess under ``timeout`` and an address-space limit (RLIMIT_AS), so a regression
fails the test instead of taking the machine down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flanmix.catalog import load_catalog
from flanmix.cli import main
from flanmix.errors import FlanmixError
from flanmix.mixture import Mixture
from flanmix.write import compile_mixture
from tests.test_mix import FIXTURE, make_spec

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(FIXTURE)


@pytest.fixture(scope="module")
def built(tmp_path_factory, catalog):
    """One small compiled mixture; tests that tamper with it work on a copy."""
    out = tmp_path_factory.mktemp("hostile") / "mix"
    compile_mixture(make_spec(), out, catalog=catalog, workers=1, offline=True, base_dir=out.parent)
    return out


def _copy(built: Path, dest: Path) -> Path:
    shutil.copytree(built, dest)
    return dest


def _compile(catalog, out, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("offline", True)
    return compile_mixture(make_spec(), out, catalog=catalog, base_dir=Path(out).parent, **kw)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("flanmix "), err
    return err.splitlines()[0]


def limited(code: str, *, timeout: float = 60, mem_mb: int = 3000, cwd: Path | None = None):
    """Run python ``code`` under a wall-clock timeout and an address-space limit."""

    def rlimits():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [PY, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=rlimits,
        env=env,
        cwd=cwd or REPO,
    )


# ============================================================================= 1. data loss


def test_overwrite_never_replaces_a_folder_flanmix_did_not_make(tmp_path, catalog, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    with pytest.raises(FlanmixError, match="not a folder flanmix made"):
        _compile(catalog, out, overwrite=True)
    assert (out / "thesis.txt").read_text() == "years of work"
    (tmp_path / "mix").mkdir()
    shutil.copy(out / "thesis.txt", tmp_path / "mix")
    assert main(["export", str(out), "-o", str(tmp_path / "x"), "--overwrite"]) == 2  # no mixture
    capsys.readouterr()


def test_overwrite_replaces_what_flanmix_made(tmp_path, catalog, built):
    out = tmp_path / "mix"
    _compile(catalog, out)
    _compile(catalog, out, overwrite=True, seed=3)
    assert Mixture.open(out).manifest["seed"] == 3
    dest = tmp_path / "exp"
    assert main(["export", str(built), "-o", str(dest)]) == 0
    assert (dest / ".flanmix").is_file()
    assert main(["export", str(built), "-o", str(dest), "--overwrite", "--format", "text"]) == 0


def test_overwrite_refuses_the_working_folder_the_spec_and_the_library(
    tmp_path, monkeypatch, capsys
):
    work = tmp_path / "work"
    shutil.copytree(FIXTURE, work / "lib")
    spec = work / "spec.yaml"
    spec.write_text("name: t\nclusters: all\ncatalog: lib\nholdout: {clusters: [qa]}\n")
    monkeypatch.chdir(work)
    for out in (".", "lib", str(work), str(tmp_path)):
        assert main(["compile", "spec.yaml", "-o", out, "--overwrite", "--offline"]) == 2
        line = _one_line_error(capsys)
        assert "refusing to write the mixture" in line, line
    assert spec.is_file() and (work / "lib/clusters.yaml").is_file()


def test_export_onto_its_own_mixture_is_refused(tmp_path, built, capsys):
    mix = _copy(built, tmp_path / "mix")
    for out in (mix, mix / "sub"):
        assert main(["export", str(mix), "-o", str(out), "--overwrite"]) == 2
        assert "refusing" in _one_line_error(capsys)
    assert Mixture.open(mix).verify() == []


def test_a_regular_file_at_out_is_refused(tmp_path, catalog, built, capsys):
    target = tmp_path / "data.csv"
    target.write_text("a,b\n1,2\n")
    with pytest.raises(FlanmixError, match="is a file, not a folder"):
        _compile(catalog, target, overwrite=True)
    assert main(["export", str(built), "-o", str(target), "--overwrite"]) == 2
    assert "is a file" in _one_line_error(capsys)
    assert target.read_text() == "a,b\n1,2\n"


def test_second_writer_of_one_out_fails_with_in_use(tmp_path, catalog):
    from flanmix.publish import lock

    out = tmp_path / "mix"
    with lock(out):  # another writer holds OUT
        with pytest.raises(FlanmixError, match="in use"):
            _compile(catalog, out)
    assert not out.exists()
    _compile(catalog, out)  # released: the next writer goes ahead
    assert not list(tmp_path.glob(".mix.lock"))


@pytest.mark.slow
def test_two_concurrent_compiles_never_both_succeed(tmp_path):
    """A real race: the first compile stalls mid-way, the second must fail with 'in use'."""
    spec = REPO / "mixtures/small_offline.yaml"
    marker = tmp_path / "stalled"
    env = {**os.environ, "FLANMIX_STALL_AT": f"pieces:{marker}", "HF_HUB_OFFLINE": "1"}
    cmd = [PY, "-m", "flanmix.cli", "compile", str(spec), "-o", str(tmp_path / "m"), "--offline"]
    first = subprocess.Popen(cmd + ["--workers", "1"], env=env, cwd=REPO)
    try:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert marker.exists()
        env.pop("FLANMIX_STALL_AT")
        second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "in use" in second.stderr
    finally:
        first.kill()
        first.wait()
    assert not (tmp_path / "m").exists()


# ============================================================================= 4. tampered data


def _flip_bit(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_export_refuses_a_tampered_mixture_unless_told(tmp_path, built, capsys):
    mix = _copy(built, tmp_path / "mix")
    _flip_bit(Mixture.open(mix).files("train")[0])
    assert main(["export", str(mix), "-o", str(tmp_path / "e")]) == 2
    assert "failed verification" in _one_line_error(capsys)
    assert not (tmp_path / "e").exists()
    # --no-verify skips the hashing (the flip may or may not break the file itself)
    main(["export", str(mix), "-o", str(tmp_path / "e2"), "--no-verify"])


def test_verify_rejects_planted_files_escaping_paths_and_inconsistent_manifests(
    tmp_path, built, capsys
):
    def tampered(name, change):
        mix = _copy(built, tmp_path / name)
        change(mix)
        assert main(["verify", str(mix)]) == 1, name
        return capsys.readouterr().out

    def plant(mix):
        shutil.copy(mix / "train-00000-of-00001.parquet", mix / "train-00009-of-00010.parquet")

    assert "not listed in the manifest" in tampered("planted", plant)

    def edit(change):
        def apply(mix):
            m = json.loads((mix / "manifest.json").read_text())
            change(m)
            (mix / "manifest.json").write_text(json.dumps(m))

        return apply

    def escape(m):
        m["splits"]["train"]["shards"][0]["file"] = "../other/train-00000-of-00001.parquet"

    assert "outside the mixture folder" in tampered("escape", edit(escape))
    assert "lists no splits" in tampered("nosplits", edit(lambda m: m.pop("splits")))

    def rows(m):
        m["splits"]["train"]["rows"] += 5

    assert "shards hold" in tampered("rows", edit(rows))

    def shard_rows(m):
        m["splits"]["train"]["shards"][0]["rows"] += 5
        m["splits"]["train"]["rows"] += 5

    assert "rows, the manifest says" in tampered("shardrows", edit(shard_rows))

    def nokeys(m):
        del m["splits"]["train"]["shards"][0]["sha256"]

    assert "lacks sha256" in tampered("nokeys", edit(nokeys))


def test_the_dataset_card_names_exact_files(built):
    card = (built / "README.md").read_text()
    assert "*" not in card.split("---")[1]
    assert "- train-00000-of-00001.parquet" in card
