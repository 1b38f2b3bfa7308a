"""The Ray executor writes the same bytes as local processes, and a killed Ray compile leaves no OUT.

A local Ray (``num_cpus=2``, no dashboard) is started once for the module; starting it takes
several seconds, so these tests are slow-marked. Skipped when ray is not installed (``flanmix[ray]``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from flanmix.catalog import load_catalog
from flanmix.errors import CompileError, Location, TemplateError
from flanmix.executor import make_executor
from flanmix.mixture import Mixture
from flanmix.write import compile_mixture
from tests.test_mix import FIXTURE, make_spec, write_sources

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    # a Ray of the test's own, even where another runs on the machine (or a killed one left its
    # address file: ray.init() without an address would try to join it)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(FIXTURE)


def _spec(sources, **kw):
    """Few-shot, options in several named styles, inverted templates, several shards per split."""
    base = dict(
        cap=2000,
        total_rows=None,
        sources=sources,
        holdout={"clusters": ["qa"]},
        formats={
            "few_shot": 0.4,
            "k": 2,
            "options": 0.8,
            "options_styles": ["flan", "letter_paren", "number_dot"],
        },
        templates={"mode": "random", "inverted": 0.3},
        eval={"few_shot": 1},
        output={"shard_rows": 500},
    )
    base.update(kw)
    return make_spec(**base)


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every shard under ``root`` (a mixture or a leave-one-cluster-out root)."""
    out = {}
    for manifest in sorted(root.rglob("manifest.json")):
        for split, info in json.loads(manifest.read_text())["splits"].items():
            for s in info["shards"]:
                out[f"{manifest.parent.relative_to(root)}/{split}/{s['file']}"] = s["sha256"]
    return out


def test_ray_and_local_write_the_same_bytes(tmp_path, catalog, local_ray):
    sources = write_sources(tmp_path / "src", n=2000, n_eval=200)
    spec = _spec(sources)
    kw = dict(catalog=catalog, workers=2, base_dir=tmp_path)
    local = compile_mixture(spec, tmp_path / "local", executor="local", **kw)
    on_ray = compile_mixture(spec, tmp_path / "ray", executor="ray", **kw)
    assert (
        len(local["splits"]["train"]["shards"]) > 1 and len(local["splits"]["eval"]["shards"]) > 1
    )
    assert local["counts"]["train"]["format"].keys() >= {"fs_opt", "zs_opt", "zs_noopt"}
    assert on_ray["splits"] == local["splits"]  # names, rows and sha256 of every shard
    assert (tmp_path / "ray" / "manifest.json").read_bytes() == (
        tmp_path / "local" / "manifest.json"
    ).read_bytes()
    assert Mixture.open(tmp_path / "ray").verify() == []

    # leave-one-cluster-out, with the workers' pieces and shards on fsspec storage (file://)
    loco = _spec(sources, holdout={"leave_one_cluster_out": True, "on_overlap": "allow"})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    compile_mixture(loco, tmp_path / "loco_local", executor="local", **kw)
    compile_mixture(loco, tmp_path / "loco_ray", executor="ray", scratch=scratch.as_uri(), **kw)
    want = _hashes(tmp_path / "loco_local")
    assert {k.split("/")[0] for k in want} == {"nli", "para", "qa", "sentiment"}  # one each
    assert _hashes(tmp_path / "loco_ray") == want
    assert list(scratch.iterdir()) == []  # the compile removed what it put there


def _setup(context: int) -> int:
    return context


def _job(state: int, job: int) -> int:
    if job == 3:
        where = Location(file="t.yaml", line=7, task="ent")
        raise TemplateError("cannot render", location=where, hint="fix it")
    if job == 4:
        raise ValueError("plain")
    time.sleep(0.01 * (job % 3))  # finish out of order
    return state + job


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_executor_keeps_job_order_and_located_errors(kind, local_ray):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers lack tests/
    with make_executor(kind, workers=2) as executor, executor.start(_setup, 100, 8) as workers:
        assert workers.count == 2
        assert workers.one_machine  # a local Ray: its actors are on this machine
        assert list(workers.map(_job, [0, 1, 2, 5, 6, 7, 8])) == [100, 101, 102, 105, 106, 107, 108]
        with pytest.raises(TemplateError) as info:
            list(workers.map(_job, range(6)))
        assert str(info.value) == "t.yaml:7 task=ent: cannot render\n  hint: fix it"
        with pytest.raises(CompileError, match="^ValueError: plain$"):
            list(workers.map(_job, [4]))
        assert list(workers.map(_job, [1])) == [101]  # the workers survive a job's error


def _die(context: int) -> int:
    os._exit(3)  # an actor's process gone while starting (killed, out of memory ...)


def test_actor_dead_at_start_is_one_line(local_ray):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with make_executor("ray", workers=2) as executor:
        failed = pytest.raises(CompileError, match=r"^a Ray worker failed: \w+Error: ")
        with failed as info, executor.start(_die, 0, 2):
            pass
        assert "\n  hint: see the Ray logs" in str(info.value)
        assert str(info.value).count("\n") == 1
        # the cluster is still good for the next start
        with executor.start(_setup, 1, 2) as workers:
            assert list(workers.map(_job, [0, 1])) == [1, 2]


def _ray_spec_file(tmp_path: Path, name: str, rows: int, extra: str = "") -> Path:
    """A spec file compiled on Ray (``executor: ray``) over ``rows`` rows of fixture sources."""
    sources = write_sources(tmp_path / "src", n=rows, n_eval=min(100, rows // 6))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        textwrap.dedent(f"""\
        name: {name}
        catalog: {FIXTURE}
        clusters: all
        cap: {rows}
        holdout: {{clusters: [qa]}}
        sources: {json.dumps(sources)}
        executor: ray
        """)
        + extra
    )
    return spec_file


def test_killed_ray_compile_leaves_no_out(tmp_path):
    spec_file = _ray_spec_file(tmp_path, "killed", 20_000, "output: {shard_rows: 10000}\n")
    out = tmp_path / "out"
    cmd = ["compile", str(spec_file), "-o", str(out), "--workers", "2"]
    stalled = Path(__file__).resolve().parent / "stalled_compile.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for stage in ("pieces", "publish"):
        marker = tmp_path / f"stalled-{stage}"
        proc = subprocess.Popen(
            [sys.executable, str(stalled), stage, str(marker), *cmd],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"compile never reached {stage}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not out.exists()
    cli = [sys.executable, "-m", "flanmix.cli", *cmd, "--quiet"]
    done = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert Mixture.open(out).verify() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out",
        "spec.yaml",
        "src",
        "stalled-pieces",
        "stalled-publish",
    ]  # the killed runs' staging folders were removed by the rerun


def test_ray_of_its_own_beside_a_running_ray(tmp_path):
    """Without an address the compile starts a Ray of its own, even where `ray start` left one
    running on the machine (ray.init() alone would join that one and refuse num_cpus)."""
    spec_file = _ray_spec_file(tmp_path, "beside", 300)
    ray_cli = str(Path(sys.executable).parent / "ray")
    # where `ray start` writes the address that a bare ray.init() joins; put back as it was after
    address_file = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    address_before = address_file.read_bytes() if address_file.exists() else None
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--num-cpus", "1", "--include-dashboard",
         "false", "--disable-usage-stats"],
        env={**env, "RAY_AUTH_MODE": "token"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        said, started = [], False
        for line in head.stdout:  # ends if it exits
            said.append(line)
            if "Ray runtime started" in line:
                started = True
                break
        if not started:
            head.wait(timeout=60)
            if any("is already running at" in x for x in said):  # a developer's own Ray
                pytest.skip("a Ray is already running here: `ray start` refuses a second head")
        assert started and head.poll() is None, "ray start --head did not stay up:\n" + "".join(
            said[-10:]
        )
        out = tmp_path / "out"
        cli = [sys.executable, "-m", "flanmix.cli", "compile", str(spec_file), "-o", str(out)]
        done = subprocess.run([*cli, "--workers", "2", "--quiet"], env=env, capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert Mixture.open(out).verify() == []
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        if address_before is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_bytes(address_before)
