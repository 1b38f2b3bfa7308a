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
from flanmix.compile import compile_mixture
from flanmix.errors import FlanmixError
from flanmix.mixture import Mixture
from tests.test_mix import FIXTURE, make_spec

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
STALLED = REPO / "tests" / "stalled_compile.py"  # a compile stopped dead at a stage


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
    with lock(out), pytest.raises(FlanmixError, match="in use"):  # another writer holds OUT
        _compile(catalog, out)
    assert not out.exists()
    _compile(catalog, out)  # released: the next writer goes ahead
    assert not list(tmp_path.glob(".mix.lock"))


@pytest.mark.slow
def test_two_concurrent_compiles_never_both_succeed(tmp_path):
    """A real race: the first compile stalls mid-way, the second must fail with 'in use'."""
    spec = REPO / "mixtures/small_offline.yaml"
    marker = tmp_path / "stalled"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["compile", str(spec), "-o", str(tmp_path / "m"), "--offline"]
    cmd = [PY, "-m", "flanmix.cli", *args]
    stalled = [PY, str(STALLED), "pieces", str(marker), *args]  # stops after rendering
    first = subprocess.Popen(stalled + ["--workers", "1"], env=env, cwd=REPO)
    try:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert marker.exists()
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
    for fmt in ("prompt-completion", "lm-eval"):
        assert main(["export", str(mix), "-o", str(tmp_path / "e"), "--format", fmt]) == 2
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

    def clear_holdout(m):
        m["holdout"]["clusters"], m["holdout"]["tasks"] = [], []

    assert "does not hold out" in tampered("holdout", edit(clear_holdout))

    def counts(m):
        task = next(iter(m["counts"]["train"]["task"]))
        m["counts"]["train"]["task"][task] += 7

    assert "the shards hold" in tampered("counts", edit(counts))


def test_the_dataset_card_names_exact_files(built):
    card = (built / "README.md").read_text()
    assert "*" not in card.split("---")[1]
    assert "- train-00000-of-00001.parquet" in card


# ============================================================================= 2. code execution


torch_needed = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None, reason="needs flanmix[train]"
)
FAST = ["tiny_hidden=16", "tiny_layers=1", "tiny_vocab=300", "eval_examples=0", "seq_len=64"]


def _train(mixture, out, *overrides, **values):
    from flanmix.train import load_config, train

    cfg = load_config(
        None, FAST + list(overrides), mixture=str(mixture), out=str(out), progress=False, **values
    )
    return train(cfg)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from tests.toy_mixture import toy_mixture

    return toy_mixture(tmp_path_factory.mktemp("toy") / "toy")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, toy):
    """A finished 2-step run with a checkpoint at step 1 and step 2."""
    out = tmp_path_factory.mktemp("run") / "run"
    _train(toy, out, "max_steps=2", "save_every=1")
    return out


def _resume_copy(run: Path, dest: Path, step: int = 1) -> Path:
    shutil.copytree(run, dest)
    for later in sorted((dest / "checkpoints").glob("step-*"))[step:]:
        shutil.rmtree(later)
    return dest


@torch_needed
@pytest.mark.slow
def test_a_crafted_checkpoint_runs_no_code(tmp_path, toy, finished_run):
    import torch

    run = _resume_copy(finished_run, tmp_path / "run")
    from flanmix.train import _index_checkpoint

    ckpt = run / "checkpoints/step-000001"
    proof = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {proof}",))

    torch.save({"optimizer": Payload(), "scheduler": {}, "step": 1, "rng": {}}, ckpt / "state.pt")
    _index_checkpoint(ckpt)  # re-hashed, as an attacker would: state.pt is the only guard
    with pytest.raises(FlanmixError, match="not plain data"):
        _train(toy, run, "max_steps=2", "save_every=1", resume="latest")
    assert not proof.exists()


@torch_needed
@pytest.mark.slow
def test_corrupt_checkpoints_are_one_line_errors(tmp_path, toy, finished_run):
    from flanmix.train import latest_checkpoint

    # a half-written checkpoint is never picked
    run = _resume_copy(finished_run, tmp_path / "tmpck")
    shutil.copytree(run / "checkpoints/step-000001", run / "checkpoints/step-000009.tmp")
    assert latest_checkpoint(run).name == "step-000001"
    # a bit flipped in the weights: refused before training on it
    run = _resume_copy(finished_run, tmp_path / "flip")
    _flip_bit(run / "checkpoints/step-000001/model.safetensors", 2000)
    with pytest.raises(FlanmixError, match="changed after it was saved"):
        _train(toy, run, "max_steps=2", resume="latest")
    # truncated state.pt and safetensors, re-hashed into the index: the loaders catch them
    from flanmix.train import _index_checkpoint

    for name in ("state.pt", "model.safetensors"):
        run = _resume_copy(finished_run, tmp_path / f"trunc-{name}")
        ckpt = run / "checkpoints/step-000001"
        data = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(data[: len(data) // 2])
        _index_checkpoint(ckpt)
        with pytest.raises(FlanmixError) as err:
            _train(toy, run, "max_steps=2", resume="latest")
        assert "checkpoint" in str(err.value) and "\n" not in err.value.message
    # no index at all: refused, never a way to turn the checks off
    run = _resume_copy(finished_run, tmp_path / "noindex")
    (run / "checkpoints/step-000001/checkpoint.json").unlink()
    with pytest.raises(FlanmixError, match="checkpoint has no checkpoint.json index"):
        _train(toy, run, "max_steps=2", resume="latest")


@torch_needed
@pytest.mark.slow
def test_resume_rules(tmp_path, toy, finished_run, monkeypatch, capsys):
    # a finished run: nothing to resume, said in one line
    sets = [a for kv in FAST for a in ("--set", kv)]
    args = ["train", str(toy), "-o", str(finished_run), "--resume", "--no-progress"]
    assert main(args + sets + ["--max-steps", "2"]) == 2
    assert "nothing to resume" in _one_line_error(capsys)
    # the same mixture named by a relative path resumes
    run = _resume_copy(finished_run, tmp_path / "rel")
    monkeypatch.chdir(toy.parent)
    summary = _train(Path(toy.name), run, "max_steps=2", resume="latest")
    assert summary["steps"] == 2 and summary["resumed_from"].endswith("step-000001")


@torch_needed
@pytest.mark.slow
def test_a_new_run_never_mixes_into_an_old_one(tmp_path, toy, finished_run, capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    args = ["train", str(toy), "-o", str(run), "--no-progress", "--max-steps", "1"]
    args += [a for kv in FAST for a in ("--set", kv)]
    assert main(args) == 2
    assert "exists" in _one_line_error(capsys)
    assert main(args + ["--overwrite"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_bytes(b"\xff\xd8")
    assert main(["train", str(toy), "-o", str(user), "--overwrite", "--no-progress"]) == 2
    assert "not a folder flanmix made" in _one_line_error(capsys)
    assert (user / "cat.jpg").exists()


@torch_needed
def test_a_non_finite_loss_stops_training_naming_the_step(tmp_path, toy, monkeypatch):
    import flanmix.train as tr

    real = tr.target_loss_sum
    monkeypatch.setattr(tr, "target_loss_sum", lambda *a: real(*a) * float("nan"))
    with pytest.raises(FlanmixError, match="training stopped at step 1: the loss is nan"):
        _train(toy, tmp_path / "nan", "max_steps=2")
    assert not (tmp_path / "nan/checkpoints").exists()


@torch_needed
def test_train_and_evaluate_refuse_a_tampered_mixture(tmp_path, toy):
    from flanmix.evaluate import evaluate

    mix = _copy(toy, tmp_path / "mix")
    _flip_bit(Mixture.open(mix).files("eval")[0])
    with pytest.raises(FlanmixError, match="failed verification"):
        _train(mix, tmp_path / "run", "max_steps=1")
    with pytest.raises(FlanmixError, match="failed verification"):
        evaluate("tiny", mix, tmp_path / "eval")


# ============================================================================= 3. denial of service

HUGE = {
    "percent": "{{ '%0999999999d' % 1 }}",
    "format": "{{ '{:>999999999}'.format(x) }}",
    "ljust": "{{ x.ljust(10**9) }}",
    "zfill": "{{ x.zfill(10**9) }}",
    "center_filter": "{{ x | center(10**9) }}",
    "format_filter": "{{ '%0999999999d' | format(1) }}",
    "repeat": "{{ x * 10**9 }}",
    "lipsum": "{{ lipsum(10**6) }}",
    "power": "{{ 9 ** (9 ** 9) }}",
    "replace": "{{ ('a' * 100000).replace('a', 'b' * 100000) }}",
    "printing_loop": "{% for i in range(99999) %}{% for j in range(99999) %}xxxxxxxx{% endfor %}{% endfor %}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "silent_loop": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "join": "{{ ([x * 100000] * 1000) | join(',') }}",
    "nested_print": "{% set a = [x] * 1000 %}{% set b = [a] * 1000 %}{{ [b] * 1000 }}",
    "nested_concat": "{% set a = [x] * 1000 %}{% set b = [a] * 1000 %}{{ 'x' ~ b }}",
    "regex": "{{ ('a' * 60 ~ 'b') | regex_replace('(a|aa)+$', '') }}",
}


@pytest.mark.slow
def test_templates_cannot_take_gigabytes_or_hours():
    """Each hostile template is a located template error, fast, in 1.5 GB of address space."""
    result = limited(
        f"""
        import json, time
        from flanmix.budget import set_limits
        from flanmix.render import compile_template
        from flanmix.schema import Template
        set_limits(seconds=0.5)
        out = {{}}
        for name, source in {HUGE!r}.items():
            t0 = time.perf_counter()
            try:
                ct = compile_template("t", Template.model_validate({{"id": "h", "input": source, "target": "y"}}))
                ct.render({{"x": "hello"}})
                out[name] = ("rendered", 0)
            except Exception as exc:
                out[name] = (type(exc).__name__ + ": " + str(exc).splitlines()[0], time.perf_counter() - t0)
        print(json.dumps(out))
        """,
        timeout=120,
        mem_mb=1500,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (what, seconds) in outcome.items():
        assert what.startswith(("TemplateError", "SandboxError")), (name, what)
        assert "field=input" in what and seconds < 5, (name, what, seconds)


#: Templates that build gigabytes, or run for hours, inside one C call: the watchdog's exception
#: and signal handlers only run between bytecodes, so each must be refused before the call.
ONE_C_CALL = {
    "sum_of_lists": "{{ ([[1] * 100] * 99999) | sum(start=[]) | length }}",
    "join_characters": "{{ (x * 199999) | join(x * 199999) }}",
    "str_join_characters": "{{ (x * 199999).join(x * 199999) }}",
    "join_an_iterator": "{{ ([x * 199999] * 1000) | select | join }}",
    "str_join_an_iterator": "{{ ''.join(([x * 199999] * 1000) | select) }}",
    "batch_fill": "{{ [x] | batch(10**9, x) | list | length }}",
    "wordwrap": "{{ ((x ~ ' ') * 100000) | wordwrap(1, true, x * 199999) }}",
    "translate": "{{ (x * 199999).translate({104: x * 199999}) }}",
    "expandtabs_keyword": "{{ ('\t' * 99999).expandtabs(tabsize=10**5) }}",
    "percent_repeat": "{{ ('%(a)s' * 3000) % {'a': x * 199999} }}",
    "format_filter_repeat": "{{ ('%(a)s' * 3000) | format(a=x * 199999) }}",
    "brace_repeat": "{{ ('{0}' * 3000).format(x * 199999) }}",
    "format_map_repeat": "{{ ('{a}' * 3000).format_map({'a': x * 199999}) }}",
    "map_copies": "{{ ([x * 199999] * 1000) | map('upper') | list | length }}",
    "encode": "{{ x.encode().ljust(3 * 10**9) | length }}",
    "to_bytes": "{{ (1).to_bytes(10**9, 'big') | length }}",
}


def test_templates_cannot_build_gigabytes_in_one_c_call():
    """Each is a located template error, refused by a size check (not a MemoryError, not the
    time budget), in well under a second, in 1.5 GB of address space."""
    result = limited(
        f"""
        import json, time
        from flanmix.render import compile_template
        from flanmix.schema import Template
        out = {{}}
        for name, source in {ONE_C_CALL!r}.items():
            t0 = time.perf_counter()
            try:
                ct = compile_template("t", Template.model_validate({{"id": "h", "input": source, "target": "y"}}))
                out[name] = ("rendered " + ct.render({{"x": "hello"}}).input[:50], 0)
            except Exception as exc:
                out[name] = (type(exc).__name__ + ": " + str(exc).splitlines()[0], time.perf_counter() - t0)
        print(json.dumps(out))
        """,
        timeout=60,
        mem_mb=1500,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (what, seconds) in outcome.items():
        assert what.startswith(("TemplateError", "SandboxError")), (name, what)
        assert "field=input" in what and seconds < 1, (name, what, seconds)
        assert "MemoryError" not in what and "longer than" not in what, (name, what)


def test_huge_powers_are_not_folded_while_compiling():
    result = limited(
        """
        import time
        from flanmix.render import compile_template
        from flanmix.schema import Template
        t0 = time.perf_counter()
        compile_template("t", Template.model_validate({"id": "p", "input": "{{ 9**(9**9) }}", "target": "y"}))
        print(time.perf_counter() - t0)
        """,
        timeout=30,
        mem_mb=1500,
    )
    assert result.returncode == 0 and float(result.stdout.split()[-1]) < 1


def test_render_budget_is_configurable_and_generous():
    from flanmix.budget import LIMITS, set_limits
    from flanmix.render import compile_template
    from flanmix.schema import Template

    ct = compile_template(
        "t", Template.model_validate({"id": "p", "input": "{{ x * 200000 }}", "target": "y"})
    )
    assert len(ct.render({"x": "abcd"}).input) == 800_000  # under the default 1,000,000
    old = LIMITS.chars
    try:
        set_limits(chars=100_000)
        with pytest.raises(FlanmixError, match="render budget"):
            ct.render({"x": "abcd"})
    finally:
        set_limits(chars=old)


BOMB = """a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_yaml_alias_bombs_and_deep_nesting_are_refused(tmp_path, capsys):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    result = limited(
        f"from flanmix.cli import main; raise SystemExit(main(['lint', {str(tmp_path / 'bomb.yaml')!r}]))",
        timeout=30,
        mem_mb=1500,
    )
    assert result.returncode == 1 and "aliases (*name) are not allowed" in result.stdout
    spec = tmp_path / "deep.yaml"
    spec.write_text("name: t\nclusters: " + "[" * 999 + "]" * 999 + "\n")
    assert main(["compile", str(spec), "-o", str(tmp_path / "o"), "--offline"]) == 2
    assert "nested deeper than" in _one_line_error(capsys)


def test_only_regular_files_under_a_size_cap_are_read(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "zero.yaml").symlink_to("/dev/zero")
    os.mkfifo(lib / "fifo.yaml")
    result = limited(
        f"from flanmix.cli import main; raise SystemExit(main(['lint', {str(lib)!r}]))",
        timeout=30,
        mem_mb=1500,
    )
    assert result.returncode == 1, result.stderr[-1000:]
    assert result.stdout.count("not a regular file") == 1  # the FIFO
    assert "zero.yaml: error[outside-link] links to /dev/zero" in result.stdout  # never read


def test_plan_limits_on_rows_shards_and_workers(tmp_path, catalog):
    from flanmix.errors import SpecError
    from flanmix.spec import spec_from_mapping

    with pytest.raises(SpecError, match="total_rows"):
        spec_from_mapping({"name": "t", "clusters": "all", "total_rows": 10**12})
    with pytest.raises(SpecError, match="shards"):
        spec_from_mapping({"name": "t", "clusters": "all", "output": {"shards": 10**9}})
    with pytest.raises(FlanmixError, match="shards planned"):
        compile_mixture(
            make_spec(total_rows=50_000, output={"shard_rows": 1}),
            tmp_path / "m",
            catalog=catalog,
            offline=True,
            base_dir=tmp_path,
        )
    said = []
    _compile(catalog, tmp_path / "w", workers=16, log=said.append)
    (line,) = [s for s in said if s.startswith("rendering")]
    units, workers = int(line.split()[1]), int(line.split()[4])
    assert workers <= min(units, os.cpu_count() or 1)


@pytest.mark.slow
def test_sigterm_stops_the_workers_too(tmp_path):
    psutil = pytest.importorskip("psutil")
    marker = tmp_path / "stalled"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    spec = REPO / "mixtures/small_offline.yaml"
    args = ["compile", str(spec), "-o", str(tmp_path / "m"), "--offline"]
    cmd = [PY, str(STALLED), "pieces", str(marker), *args]  # stops after rendering
    main_proc = subprocess.Popen(cmd + ["--workers", "2"], env=env, cwd=REPO)
    try:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.2)
        children = psutil.Process(main_proc.pid).children(recursive=True)
        assert children
        main_proc.terminate()
        assert main_proc.wait(timeout=30) == 143  # 128 + SIGTERM, after unwinding ("terminated")
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive
    finally:
        main_proc.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stalled"]  # no temporary folder left


# ============================================================================= 5. reads outside


def _task_with_local(folder: Path, path: str) -> Path:
    src = (FIXTURE / "task_templates/sentiment/senti.yaml").read_text()
    import yaml

    data = yaml.safe_load(src)
    data["source"] = {
        "local": {"format": "csv", "files": {"train": path}},
        "splits": {"train": "train", "eval": None},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "senti.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder / "senti.yaml"


def test_local_sources_stay_inside_the_task_folder(tmp_path, monkeypatch):
    from flanmix.catalog import read_task_file
    from flanmix.sources import HubState, resolve_source

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "credentials.csv").write_text("text,label\nhunter2,1\n")
    lib = tmp_path / "lib/task_templates/sentiment"
    task_file = _task_with_local(lib, "../../../victim/credentials.csv")
    with pytest.raises(FlanmixError, match="outside the task's folder"):
        read_task_file(task_file)
    # a link inside the folder that points outside is caught when the source is opened
    (lib / "data.csv").symlink_to(victim / "credentials.csv")
    task = read_task_file(_task_with_local(lib, "data.csv")).task
    with pytest.raises(FlanmixError, match="outside the task's folder"):
        resolve_source(task, "train", base_dir=lib, hub=HubState(offline=False))
    # allowed explicitly
    monkeypatch.setenv("FLANMIX_ALLOW_OUTSIDE_SOURCES", "1")
    assert read_task_file(_task_with_local(lib, "../../../victim/credentials.csv"))


# ============================================================================= 6. one-line errors


def test_spec_mistakes_that_were_silently_ignored(tmp_path, catalog):
    from flanmix.spec import spec_from_mapping

    for field, value in (("seed", True), ("seed", "7"), ("cap", "10"), ("total_rows", "100")):
        with pytest.raises(FlanmixError, match=f"{field}.*expected a whole number"):
            spec_from_mapping({"name": "t", "clusters": "all", field: value})

    with pytest.raises(FlanmixError, match="finite number"):
        spec_from_mapping(
            {
                "name": "t",
                "clusters": "all",
                "mixing": {"method": "weights", "weights": {"ent": "nan"}},
            }
        )
    spec = make_spec(mixing={"method": "weights", "weights": {"entt": 2.0}})
    with pytest.raises(FlanmixError, match="weight for 'entt'.*\n.*did you mean 'ent'"):
        compile_mixture(spec, tmp_path / "a", catalog=catalog, offline=True, base_dir=tmp_path)
    spec = make_spec(clusters=[], tasks=["ent", "senti"], exclude_tasks=["senti"])
    with pytest.raises(FlanmixError, match="both in tasks and in exclude_tasks"):
        compile_mixture(spec, tmp_path / "b", catalog=catalog, offline=True, base_dir=tmp_path)
    for spec in (make_spec(exclude_tasks=["sentii"]), make_spec(sources={"sentii": "x"})):
        with pytest.raises(FlanmixError, match="unknown task 'sentii'.*\n.*did you mean 'senti'"):
            compile_mixture(spec, tmp_path / "c", catalog=catalog, offline=True, base_dir=tmp_path)


def test_output_path_problems_are_one_line(tmp_path, catalog, built, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "sub", tmp_path / ("n" * 250)):
        assert main(["export", str(built), "-o", str(out)]) == 2
        line = _one_line_error(capsys)
        assert "is a file, not a folder" in line or "name is too long" in line
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(["export", str(built), "-o", str(ro / "x")]) == 2
        assert "permission denied" in _one_line_error(capsys)


def test_disk_full_during_export_is_one_line_and_leaves_nothing(
    tmp_path, built, monkeypatch, capsys
):
    import errno

    import pyarrow.parquet as pq

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    assert main(["export", str(built), "-o", str(tmp_path / "e")]) == 2
    assert "no space left on device" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _edited_mixture(path: Path, edit, *, fmt: str = "parquet") -> Path:
    """A toy mixture whose eval shard ``edit`` rewrote (rows and schema), the manifest's sha256,
    bytes and rows updated to match: only a schema or row check can tell."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flanmix.mixture import SCHEMA, sha256_file
    from tests.toy_mixture import copy_rows, sentiment_rows, write_mixture

    write_mixture(path, {"train": copy_rows(), "eval": sentiment_rows()[:4] + copy_rows()[:2]})
    m = json.loads((path / "manifest.json").read_text())
    shard = m["splits"]["eval"]["shards"][0]
    rows, schema = edit(pq.read_table(path / shard["file"]).to_pylist(), SCHEMA)
    table = pa.Table.from_pylist(rows, schema=schema)
    if fmt == "arrow":
        m["file_format"] = "arrow"
        for split in m["splits"].values():
            for sh in split["shards"]:
                old = path / sh["file"]
                t = table if sh is shard else pq.read_table(old)
                old.unlink()
                sh["file"] = sh["file"].replace(".parquet", ".arrow")
                sink = pa.OSFile(str(path / sh["file"]), "wb")
                with sink, pa.ipc.new_stream(sink, t.schema) as w:
                    w.write_table(t)
    else:
        pq.write_table(table, path / shard["file"])
    for split in m["splits"].values():
        for sh in split["shards"]:
            sh["sha256"] = sha256_file(path / sh["file"])
            sh["bytes"] = (path / sh["file"]).stat().st_size
    shard["rows"] = m["splits"]["eval"]["rows"] = table.num_rows
    (path / "manifest.json").write_text(json.dumps(m))
    return path


def _set(column, value, index=0):
    def edit(rows, schema):
        rows[index][column] = value
        return rows, schema

    return edit


def _field(i, field, value=None):
    def edit(rows, schema):
        for r in rows:
            r[field.name] = value(r) if value else r[field.name]
        return rows, schema.set(i, field)

    return edit


def _drop(column):
    def edit(rows, schema):
        return [{k: v for k, v in r.items() if k != column} for r in rows], schema.remove(
            schema.get_field_index(column)
        )

    return edit


def _nullable_inputs(rows, schema):
    import pyarrow as pa

    rows[1]["inputs"] = None
    return rows, schema.set(0, pa.field("inputs", pa.string()))


def _int_inputs(rows, schema):
    import pyarrow as pa

    for i, r in enumerate(rows):
        r["inputs"] = i
    return rows, schema.set(0, pa.field("inputs", pa.int64(), nullable=False))


SCHEMA_EDITS = {  # caught from the footer, on every open
    "options dropped": (_drop("options"), "no 'options' column"),
    "null inputs": (_nullable_inputs, "column 'inputs' allows nulls"),
    "int inputs": (_int_inputs, "column 'inputs' is int64, the mixture schema says string"),
}
ROW_EDITS = {  # caught by 'flanmix verify' reading the rows
    "answer_index 7": (_set("answer_index", 7, 2), "row 2: answer_index 7 is outside the row's 2 options"),
    "answer_index -1": (_set("answer_index", -1), "row 0: answer_index -1 is outside"),
    "answer_index null": (_set("answer_index", None, 1), "row 1: answer_index is null but the row has 2 options"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SCHEMA_EDITS))
def test_a_shard_with_another_schema_fails_verify_and_every_reader(tmp_path, capsys, case):
    edit, expected = SCHEMA_EDITS[case]
    mix = _edited_mixture(tmp_path / "mix", edit)
    assert main(["verify", str(mix)]) == 1
    out = capsys.readouterr().out
    assert f"{mix}: eval-00000-of-00001.parquet: {expected}" in out, out
    for argv in (["export", str(mix), "-o", str(tmp_path / "e")], ["export", str(mix), "-o", str(tmp_path / "e"), "--no-verify"]):  # fmt: skip
        assert main(argv) == 2
        line = _one_line_error(capsys)
        assert "eval-00000-of-00001.parquet: " + expected in line, line
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("case", list(ROW_EDITS))
def test_verify_names_the_shard_and_first_row_breaking_an_invariant(tmp_path, capsys, case):
    edit, expected = ROW_EDITS[case]
    mix = _edited_mixture(tmp_path / "mix", edit)
    assert main(["verify", str(mix)]) == 1
    out = capsys.readouterr().out
    assert f"{mix}: eval-00000-of-00001.parquet: {expected}" in out, out


def test_verify_finds_nulls_an_arrow_shard_declares_impossible(tmp_path, capsys):
    mix = _edited_mixture(tmp_path / "mix", _set("targets", None, 3), fmt="arrow")
    assert main(["verify", str(mix)]) == 1
    out = capsys.readouterr().out
    assert "eval-00000-of-00001.arrow: row 3: targets is null" in out, out


def test_verify_passes_an_intact_toy_mixture(tmp_path, capsys):
    mix = _edited_mixture(tmp_path / "mix", lambda rows, schema: (rows, schema), fmt="arrow")
    assert main(["verify", str(mix)]) == 0, capsys.readouterr().out


def test_a_manifest_with_missing_keys_is_one_line(tmp_path, built, capsys):
    mix = _copy(built, tmp_path / "mix")
    m = json.loads((mix / "manifest.json").read_text())
    del m["holdout"], m["name"]
    (mix / "manifest.json").write_text(json.dumps(m))
    assert main(["inspect", str(mix)]) == 2
    assert "manifest.json is incomplete" in _one_line_error(capsys)


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"x"', "1", "[" * 100000 + "]" * 100000])
@pytest.mark.parametrize("command", ["verify", "inspect", "export"])
def test_a_manifest_that_is_not_a_json_object_is_one_line(tmp_path, built, capsys, text, command):
    mix = _copy(built, tmp_path / "mix")
    (mix / "manifest.json").write_text(text)
    argv = [command, str(mix)] + (["-o", str(tmp_path / "e")] if command == "export" else [])
    assert main(argv) == 2
    line = _one_line_error(capsys)
    assert str(mix / "manifest.json") in line
    assert "manifest.json is not a JSON object" in line or "nested too deep" in line, line


def test_promptsource_files_bad_bytes_and_deep_nesting(tmp_path):
    from flanmix.promptsource import read_templates_file

    bad = tmp_path / "bad/templates.yaml"
    bad.parent.mkdir()
    bad.write_bytes(b"dataset: x\ntemplates: \xff\xfe\n")
    with pytest.raises(FlanmixError, match="not UTF-8"):
        read_templates_file(bad)
    deep = tmp_path / "deep/templates.yaml"
    deep.parent.mkdir()
    deep.write_text("dataset: x\ntemplates: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(FlanmixError, match="nested"):
        read_templates_file(deep)


def test_imported_task_files_are_ordinary_files(tmp_path):
    from flanmix.promptsource import write_task

    old = os.umask(0o022)
    try:
        path = write_task({"id": "ps_x", "cluster": "imported"}, tmp_path)
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_newline_in_a_file_name_cannot_forge_a_lint_line(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "x\nOK: 0 errors.yaml").write_text("id: [\n")
    from flanmix.lint import format_text, lint_paths

    text = format_text(lint_paths([lib]))
    assert not any(line.startswith("OK") for line in text.splitlines())
    assert "x\\nOK: 0 errors.yaml" in text


def test_a_list_of_undefined_is_an_error_not_text():
    from flanmix.render import compile_template
    from flanmix.schema import Template

    ct = compile_template(
        "t", Template.model_validate({"id": "u", "input": "{{ [x.no_such_key] }}", "target": "y"})
    )
    with pytest.raises(FlanmixError, match="undefined"):
        ct.render({"x": {"a": 1}})


def test_a_huge_integer_literal_is_one_located_line_in_every_command(tmp_path, capsys):
    """Python refuses to read an integer of over 4,300 digits (a ValueError from Jinja's lexer):
    lint, preview and compile each say where, never with a traceback."""
    fixture = REPO / "tests" / "fixtures" / "lint" / "broken" / "huge_integer_literal.yaml"
    (tmp_path / "task_templates" / "toy").mkdir(parents=True)
    task_file = tmp_path / "task_templates" / "toy" / "huge_integer_literal.yaml"
    shutil.copyfile(fixture, task_file)
    (tmp_path / "spec.yaml").write_text("name: t\nclusters: all\ntotal_rows: 10\n")
    where = "task=huge_integer_literal template=review_label field=input"
    assert main(["lint", str(task_file), "--min-templates", "1", "--min-inverted", "0"]) == 1
    out = capsys.readouterr().out
    assert f"{task_file}:20 {where}: error[jinja-syntax]" in out and "Traceback" not in out
    assert main(["preview", "huge_integer_literal", "--root", str(tmp_path)]) == 2
    assert where in _one_line_error(capsys)
    args = ["compile", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "out"), "--offline"]
    assert main([*args, "--root", str(tmp_path)]) == 2
    line = _one_line_error(capsys)
    assert "huge_integer_literal.yaml:17 " in line and where in line, line  # the template


def test_a_yaml_file_of_millions_of_values_is_refused_before_it_is_built(tmp_path):
    """The 16 MB cap alone let a flow list of 7 million ones take 5 GB and a minute to load."""
    import resource

    from flanmix.yamlio import MAX_NODES, load_yaml

    path = tmp_path / "big.yaml"
    path.write_text("id: x\nmetadata:\n  pad: [" + ",".join(["1"] * (2 * MAX_NODES)) + "]\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FlanmixError, match="more than 250,000 values"):
        load_yaml(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB


def test_task_libraries_read_no_file_from_elsewhere(tmp_path):
    """A link in task_templates/ to a file outside was read (its lines and keys shown in errors),
    and files under hidden folders such as .git/ were loaded as tasks."""
    from flanmix.catalog import iter_task_paths

    lib = tmp_path / "lib" / "task_templates" / "c"
    lib.mkdir(parents=True)
    (lib / "t.yaml").write_text("id: t\n")
    (lib / "same.yaml").symlink_to(lib / "t.yaml")  # inside the library: read
    (lib.parent / ".git").mkdir()
    (lib.parent / ".git" / "x.yaml").write_text("id: x\n")
    (lib / ".#t.yaml").write_text("id: t\n")  # an editor's lock file
    root = lib.parent
    assert [p.name for p in iter_task_paths([root])] == ["same.yaml", "t.yaml"]
    (tmp_path / "secret.yaml").write_text("password: x\n")
    (lib / "evil.yaml").symlink_to(tmp_path / "secret.yaml")
    with pytest.raises(FlanmixError, match="outside the task library"):
        list(iter_task_paths([root]))


def test_an_error_quoting_a_huge_value_is_cut(tmp_path, capsys):
    """An unknown options header of 3,000 characters was echoed whole in the error line."""
    spec = tmp_path / "s.yaml"
    spec.write_text(
        'name: s\nclusters: all\ntotal_rows: 100\nformats:\n  options_headers: ["'
        + "x" * 3000
        + '"]\n'
    )
    assert main(["compile", str(spec), "-o", str(tmp_path / "o"), "--offline"]) == 2
    err = capsys.readouterr().err
    assert "unknown options header" in err and "characters ...]" in err and len(err) < 1000


def test_inspect_refuses_a_mixture_with_a_missing_shard(tmp_path, built, capsys):
    """inspect printed the manifest's composition (exit 0) for shards that were gone."""
    mix = _copy(built, tmp_path / "mix")
    shard = sorted(mix.glob("train-*.parquet"))[0]
    shard.unlink()
    assert main(["inspect", str(mix)]) == 2
    assert f"shard {shard.name} is missing" in _one_line_error(capsys)


def test_aliases_of_plain_values_are_refused_too(tmp_path):
    """The README says aliases are refused; an alias of a plain value was accepted."""
    from flanmix.yamlio import load_yaml

    path = tmp_path / "t.yaml"
    path.write_text("id: x\ndescription: &d hello\nmetadata: {x: *d}\n")
    with pytest.raises(FlanmixError, match=r"aliases \(\*name\) are not allowed"):
        load_yaml(path)


def test_a_missing_file_in_a_spec_sources_folder_gets_a_true_hint(tmp_path, capsys):
    """The hint said '--offline uses the task's samples instead', but a spec's sources: folder
    is read offline too."""
    (tmp_path / "empty").mkdir()
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"name: s\nclusters: all\ntotal_rows: 100\nsources: {{sst2: {tmp_path / 'empty'}}}\n"
    )
    assert main(["compile", str(spec), "-o", str(tmp_path / "o"), "--offline"]) == 2
    err = capsys.readouterr().err
    assert "fix or remove sst2 in the spec's sources:" in err and "--offline" not in err


def test_preview_locates_a_template_error_at_the_task_file_line(tmp_path, capsys):
    """preview said 'task=sst2 template=...' with no file or line, where lint gives both."""
    import re

    lib = tmp_path / "task_templates" / "c"
    lib.mkdir(parents=True)
    text = (REPO / "task_templates" / "sentiment" / "sst2.yaml").read_text()
    (lib / "sst2.yaml").write_text(text.replace("{{ sentence | trim }}", "{{ sentence | nosuch }}"))
    (tmp_path / "clusters.yaml").write_text("clusters:\n  c: {description: C, tasks: [sst2]}\n")
    assert main(["preview", "sst2", "--root", str(tmp_path)]) == 2
    line = _one_line_error(capsys)
    assert re.search(r"sst2\.yaml:\d+ task=sst2 template=\w+ field=input: .*nosuch", line), line
