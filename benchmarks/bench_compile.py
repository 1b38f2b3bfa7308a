"""Benchmark of ``flanmix compile`` against a raw render-and-write loop, measured in one run.

Generates synthetic NLI-like tasks (task files + local Parquet sources) in a temporary directory and
prints a Markdown table:

(a) raw loop: the source Parquet file read into Python rows, a precompiled sandboxed Jinja NLI
    template (input with an OPTIONS list, and target), rows batched 10k at a time into pyarrow and
    written to Parquet, on one core; timed with its read, as flanmix and ``datasets.map`` are
    timed with theirs (the loop without its read, rows already in memory, is shown beside it);
    measured before and after each block of compiles and once in a fresh forked process, its
    best is the baseline (this VM's speed drifts within minutes, and a loop in this process runs
    at a speed that depends on what the process ran before);
(b) promptsource ``Template.apply`` on the same rows (a subset; skipped if promptsource is missing);
(c) ``flanmix compile`` with all its work (template choice, options styles, few-shot, hashing,
    stats, shards, manifest) with 1 and with 2 workers, per core and as a ratio to (a); next to
    each, what a Hugging Face ``datasets`` user writes for the same rows: ``Dataset.from_parquet``
    on the same files, a batched ``.map`` rendering (a)'s templates on as many processes, and
    ``.to_parquet``, timed whole (load + map + write) with a fresh cache folder; each tool's
    runs in a block after an untimed first run (interleaved, a compile right after datasets.map
    found its memory reclaimed by this VM);
(d) a FLAN-2021-scale mixture: 60 tasks, 30k cap, about 1.5M source rows, 1 and 2 workers, and
    the same compile from the command line on local processes and on Ray, 2 actors: a local Ray
    started by the compile, and a Ray already running (``ray start --head``, its processes counted
    with the compile's; timed from its second compile, as a cluster in use, the first shown
    beside): time (best of 2 alternated runs, not watched), rows/s, peak RSS (one run of each,
    watched), same shards or not;
(e) peak RSS of a compile (the process and its workers) at 1M and 5M source rows;
(f) long rows (premises of 520 words, inputs of ~3.7 kB) zero-shot, and few-shot (k=4, inputs of
    ~18 kB), 50k rows: the raw loop on the same rows (for few-shot rows, 4 exemplars from its batch
    before each input, as long as flanmix's), then, as in (c), the compile on 1 and 2 workers in a
    warm process and the batched ``datasets.map`` of (c) on as many processes (few-shot: the same
    exemplar layout); last, both from the command line (starting Python included) with the peak
    RSS of the process tree;
(g) one source of 100k long rows written as one row group (pyarrow's and pandas' default) and as
    1,000-row groups (what ``datasets`` writes), compiled from the command line on 2 workers.

Every tool measured in a warm process (this one, and the one running ``datasets.map``) runs with
the memory settings of flanmix's own processes (:func:`flanmix.assemble.tune_own_process`, as
``flanmix compile`` sets them for itself; forked workers inherit them): the same for every tool.

Usage: python benchmarks/bench_compile.py [--quick] [--keep DIR] [--skip c,d,ray,e,f,g,ds]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = [
    "the",
    "a",
    "harbour",
    "council",
    "storm",
    "village",
    "museum",
    "library",
    "bakery",
    "river",
    "train",
    "mountain",
    "teacher",
    "student",
    "report",
    "city",
    "river",
    "bridge",
    "market",
    "garden",
    "winter",
    "summer",
    "morning",
    "evening",
    "quickly",
    "slowly",
    "opened",
    "closed",
    "announced",
    "reported",
    "found",
    "built",
    "visited",
    "painted",
    "wrote",
    "read",
    "sold",
    "bought",
    "moved",
]
LABELS = ["entailment", "neutral", "contradiction"]
CHOICES = ["yes", "it is not possible to tell", "no"]
OPTIONS_BLOCK = "\n\nOPTIONS:\n{% for c in answer_choices %}- {{ c }}\n{% endfor %}"


def sentence(i: int, n: int) -> str:
    return (
        " ".join(WORDS[(i * 7 + k * 13 + (i >> k)) % len(WORDS)] for k in range(n)).capitalize()
        + "."
    )


def make_rows(n: int, offset: int = 0, words: int = 18) -> dict[str, list]:
    return {
        "premise": [sentence(offset + i, words) for i in range(n)],
        "hypothesis": [sentence(offset + i * 3 + 1, 8) for i in range(n)],
        "label": [(offset + i) % 3 for i in range(n)],
    }


TEMPLATES = [
    (
        "premise_hyp",
        '{{ premise }}\n\nBased on the paragraph above can we conclude that "{{ hypothesis }}"?',
    ),
    (
        "read",
        "Read the following and determine if the hypothesis can be inferred from the premise:\n\nPremise: {{ premise }}\n\nHypothesis: {{ hypothesis }}",
    ),
    ("true_follows", "{{ premise }}\n\nCan we draw the following conclusion?\n{{ hypothesis }}"),
    (
        "does_it_follow",
        "{{ premise }}\nDoes this next sentence follow, given the preceding text?\n{{ hypothesis }}",
    ),
    ("entails", 'Does "{{ premise }}" entail "{{ hypothesis }}"?'),
    ("suppose", 'Suppose {{ premise }} Can we infer that "{{ hypothesis }}"?'),
    ("given", "Given that {{ premise }} Does it follow that {{ hypothesis }}?"),
    ("guaranteed", "{{ premise }} Based on that, is it guaranteed that {{ hypothesis }}?"),
]


def task_file(task_id: str, cluster: str) -> dict:
    templates = [
        {
            "id": tid,
            "input": text,
            "target": "{{ answer_choices[label] }}",
            "answer_choices": list(CHOICES),  # a list each: the YAML has no aliases
        }
        for tid, text in TEMPLATES
    ]
    templates += [
        {
            "id": "write_entailed",
            "inverted": True,
            "input": "{{ premise }}\n\nWrite a sentence that follows from the text above.",
            "target": "{{ hypothesis if label == 0 else skip('needs an entailed pair') }}",
        },
        {
            "id": "write_contradiction",
            "inverted": True,
            "input": "{{ premise }}\n\nWrite a sentence that contradicts it.",
            "target": "{{ hypothesis if label == 2 else skip('needs a contradiction') }}",
        },
    ]
    samples = [{k: v[0] for k, v in make_rows(1, i).items()} for i in range(6)]
    return {
        "id": task_id, "cluster": cluster, "description": "Synthetic NLI task for the benchmark.",
        "source": {"local": {"format": "parquet", "files": {"train": "x.parquet"}}, "splits": {"train": "train", "eval": None}},
        "fields": {"premise": "string", "hypothesis": "string", "label": {"type": "class_label", "names": LABELS}},
        "evaluation": {"kind": "options"}, "samples": samples, "templates": templates,
    }  # fmt: skip


def make_library(root: Path, n_tasks: int, rows_per_task: int, words: int = 18) -> dict[str, str]:
    """Task files, clusters.yaml and Parquet sources; returns task -> source folder."""
    if root.exists():
        shutil.rmtree(root)
    clusters: dict[str, list[str]] = {}
    sources = {}
    base = pa.table(make_rows(rows_per_task, words=words))
    for i in range(n_tasks):
        cluster = f"c{i % 12:02d}"
        tid = f"t{i:03d}"
        clusters.setdefault(cluster, []).append(tid)
        folder = root / "task_templates" / cluster
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{tid}.yaml").write_text(
            yaml.safe_dump(task_file(tid, cluster), sort_keys=False)
        )
        data = root / "data" / tid
        data.mkdir(parents=True)
        pq.write_table(base, data / "train.parquet", row_group_size=10_000)
        sources[tid] = str(data)
    (root / "clusters.yaml").write_text(
        yaml.safe_dump(
            {"clusters": {c: {"description": c, "tasks": t} for c, t in clusters.items()}}
        )
    )
    return sources


def write_spec(root: Path, sources: dict[str, str], cap: int, **extra) -> Path:
    spec = {
        "name": "bench", "catalog": str(root), "clusters": "all", "cap": cap, "seed": 0,
        "mixing": {"method": "examples_proportional", "max_rate": extra.pop("max_rate", None)},
        "templates": {"mode": "random", "inverted": True},
        "formats": {"few_shot": 0.1, "k": 2, "options": 0.9, "options_style": "varied"},
        "eval": {"enabled": False}, "output": {"shard_rows": 100_000}, "sources": sources,
    }  # fmt: skip
    spec.update(extra)
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- (a) and (b)


def raw_loop(path: Path, out: Path, n: int) -> tuple[float, float]:
    """Rows/s of the raw loop: read the source Parquet file into Python rows, sandboxed Jinja
    (precompiled) -> pyarrow -> Parquet in 10k-row batches; and the rows/s of the same loop without
    its read (rows already in memory, as this benchmark measured it before: flanmix and
    ``datasets.map`` read their sources in their times)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    t_in = env.from_string(TEMPLATES[0][1] + OPTIONS_BLOCK)
    t_out = env.from_string("{{ answer_choices[label] }}")
    start = time.perf_counter()
    rows = pq.read_table(path).slice(0, n).to_pylist()
    read = time.perf_counter()
    schema = pa.schema([("inputs", pa.string()), ("targets", pa.string())])
    with pq.ParquetWriter(str(out), schema) as writer:
        for b in range(0, len(rows), 10_000):
            inputs, targets = [], []
            for row in rows[b : b + 10_000]:
                ctx = {**row, "answer_choices": CHOICES}
                inputs.append(t_in.render(ctx).strip())
                targets.append(t_out.render(ctx).strip())
            writer.write_table(pa.table({"inputs": inputs, "targets": targets}, schema=schema))
    end = time.perf_counter()
    return len(rows) / (end - start), len(rows) / (end - read)


def raw_few_loop(path: Path, out: Path, n: int, k: int = 4) -> tuple[float, float]:
    """Rows/s of the raw loop on few-shot rows, with and without its read (as :func:`raw_loop`):
    the same templates, each input preceded by ``k`` exemplars of its 10k-row batch (the layout
    of :func:`ds_render_batch`, as long as flanmix's few-shot rows), written to Parquet in 10k-row
    batches."""
    start = time.perf_counter()
    cols = pq.read_table(path).slice(0, n).to_pydict()
    read = time.perf_counter()
    schema = pa.schema([("inputs", pa.string()), ("targets", pa.string())])
    with pq.ParquetWriter(str(out), schema) as writer:
        for b in range(0, n, 10_000):
            batch = {name: values[b : b + 10_000] for name, values in cols.items()}
            writer.write_table(pa.table(ds_render_batch(batch, k), schema=schema))
    end = time.perf_counter()
    return n / (end - start), n / (end - read)


def best_raw(loop, *args, repeat: int) -> tuple[float, float]:
    """The best of ``repeat`` runs of a raw loop: (rows/s with its read, rows/s without)."""
    runs = [loop(*args) for _ in range(repeat)]
    return max(r[0] for r in runs), max(r[1] for r in runs)


def _raw_side(args: tuple) -> float:
    loop, path, out, n, repeat, barrier = args
    loop(path, out, min(n, 2_000))  # untimed, as the one-process loop's process is warm
    barrier.wait()
    return best_raw(loop, path, out, n, repeat=repeat)[0]


def raw_side_by_side(loop, path: Path, outs: list[Path], n: int, repeat: int) -> list[float]:
    """Rows/s (with its read) of raw loops started together in forked processes (one per path in
    ``outs``), each the best of ``repeat``: with two, what this machine gives each of two
    processes doing the same work, the ceiling of a per-core ratio at two workers; with one, the
    loop in a fresh process (this one's speed depends on what it ran before)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(len(outs))
        with ctx.Pool(len(outs)) as pool:
            return pool.map(_raw_side, [(loop, path, o, n, repeat, barrier) for o in outs])


def promptsource_loop(path: Path, n: int) -> float | None:
    try:
        from promptsource.templates import Template
    except Exception:  # noqa: BLE001 - optional comparison
        return None
    t = Template(
        "bench",
        '{{ premise }}\n\nBased on the paragraph above can we conclude that "{{ hypothesis }}"?\n\n'
        "OPTIONS:\n{% for c in answer_choices %}- {{ c }}\n{% endfor %} ||| {{ answer_choices[label] }}",
        "bench",
        answer_choices="yes ||| it is not possible to tell ||| no",
    )
    rows = pq.read_table(path).slice(0, n).to_pylist()
    start = time.perf_counter()
    for row in rows:
        t.apply(row)
    return len(rows) / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- datasets.map

_DS_TEMPLATES: list = []  # compiled once per process (a mapped function is pickled: no templates)


def ds_render_batch(batch: dict[str, list], k: int = 0) -> dict[str, list]:
    """What a `datasets` user maps (batched): the raw loop's templates on a batch of rows; with
    ``k``, each input is preceded by k exemplars of the same batch (flanmix's few-shot layout:
    input, newline, target, blank line) so the text is the size of flanmix's few-shot rows."""
    if not _DS_TEMPLATES:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
        _DS_TEMPLATES.append(env.from_string(TEMPLATES[0][1] + OPTIONS_BLOCK))
        _DS_TEMPLATES.append(env.from_string("{{ answer_choices[label] }}"))
    t_in, t_out = _DS_TEMPLATES
    inputs, targets = [], []
    for premise, hypothesis, label in zip(
        batch["premise"], batch["hypothesis"], batch["label"], strict=True
    ):
        ctx = {"premise": premise, "hypothesis": hypothesis, "label": label}
        ctx["answer_choices"] = CHOICES
        inputs.append(t_in.render(ctx).strip())
        targets.append(t_out.render(ctx).strip())
    if k:
        n = len(inputs)
        shots = [x + "\n" + y + "\n\n" for x, y in zip(inputs, targets, strict=True)]
        inputs = [
            "".join(shots[(i + j) % n] for j in range(1, k + 1)) + x for i, x in enumerate(inputs)
        ]
    return {"inputs": inputs, "targets": targets}


def datasets_map(files: list[str], out: str, procs: int, k: int, cache_dir: str) -> int:
    """Parquet sources -> batched ``Dataset.map`` on ``procs`` processes -> one Parquet file, with
    a fresh ``cache_dir`` (nothing served from a cache); returns the row count."""
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_parquet(files, cache_dir=cache_dir)
    ds = ds.map(
        ds_render_batch,
        batched=True,
        num_proc=procs if procs > 1 else None,
        remove_columns=ds.column_names,
        fn_kwargs={"k": k},
    )
    ds.to_parquet(out)
    return len(ds)


def datasets_once(files: list[Path], out: Path, procs: int, k: int = 0) -> tuple[float, int]:
    """(seconds, rows) of :func:`datasets_map` in this process: load + map + to_parquet."""
    cache = tempfile.mkdtemp(prefix="ds-cache-", dir=out.parent)
    try:
        start = time.perf_counter()
        rows = datasets_map([str(f) for f in files], str(out), procs, k, cache)
        return time.perf_counter() - start, rows
    finally:
        shutil.rmtree(cache, ignore_errors=True)


class DatasetsRunner:
    """:func:`datasets_once` in a separate Python that stays up between runs (imports and caches
    warm, as for the compiles), so that what ``datasets`` leaves in a process (tqdm's monitor
    thread, memory) never shares the process of the flanmix compiles: a compile forks its workers
    only from a process without other threads."""

    def __init__(self) -> None:
        code = (
            "import json, sys\n"
            "from pathlib import Path\n"
            "from flanmix.assemble import tune_own_process\n"
            "tune_own_process()  # as the benchmark's own process\n"
            "from benchmarks.bench_compile import datasets_once\n"
            "for line in sys.stdin:\n"
            "    a = json.loads(line)\n"
            "    t, n = datasets_once([Path(f) for f in a['files']], Path(a['out']), a['procs'], a['k'])\n"
            "    print(json.dumps([t, n]), flush=True)\n"
        )
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def run(self, files: list[Path], out: Path, procs: int, k: int = 0) -> tuple[float, int]:
        job = {"files": [str(f) for f in files], "out": str(out), "procs": procs, "k": k}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise SystemExit("datasets.map failed:\n" + self.log.read()[-3000:])
        took, rows = json.loads(line)
        return took, rows

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.log.close()


def datasets_tree(files: list[Path], out: Path, procs: int, k: int) -> tuple[float, float, int]:
    """(seconds, peak RSS in MiB of the process tree, rows) of :func:`datasets_map` in a fresh
    Python, timed as the (f) compiles are: from the command line, starting Python included."""
    cache = tempfile.mkdtemp(prefix="ds-cache-", dir=out.parent)
    code = (
        "from benchmarks.bench_compile import datasets_map; "
        f"datasets_map({[str(f) for f in files]!r}, {str(out)!r}, {procs}, {k}, {cache!r})"
    )
    try:
        took, peak, rc, _ = watch_tree([sys.executable, "-c", code])
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if rc != 0:
        raise SystemExit(f"datasets.map failed ({rc}): {code}")
    return took, peak, pq.ParquetFile(out).metadata.num_rows


def datasets_row(
    label: str, procs: int, runs: list[tuple[float, int]], flanmix_rate: float, note: str = ""
) -> tuple[str, str, str]:
    """The table row of the best of ``runs`` of datasets.map, against flanmix's rows/s."""
    took, rows = min(runs)
    return (
        f"{label} batched datasets.map + to_parquet, {procs} process(es), {rows:,} rows "
        f"(best of {len(runs)})",
        f"{rows / took:,.0f} rows/s total",
        f"flanmix / datasets.map: {flanmix_rate / (rows / took):.2f}x{note}",
    )


def mean_input_kb(paths: list[Path]) -> float:
    """Mean length of the ``inputs`` column over Parquet files, in kB of characters."""
    import pyarrow.compute as pc

    total = count = 0
    for path in paths:
        col = pq.read_table(path, columns=["inputs"]).column("inputs")
        total += pc.sum(pc.utf8_length(col)).as_py() or 0
        count += len(col)
    return total / max(count, 1) / 1000


# ----------------------------------------------------------------------------- (c)-(e)


def compile_once(spec: Path, out: Path, workers: int) -> tuple[float, int]:
    from flanmix.compile import compile_mixture

    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    manifest = compile_mixture(spec, out, workers=workers)
    took = time.perf_counter() - start
    return took, manifest["splits"]["train"]["rows"]


def compile_cmd(
    spec: Path, out: Path, workers: int, executor: str = "local", address: str | None = None
) -> list[str]:
    """The command line of a compile (an OUT left by an earlier run is removed first)."""
    if out.exists():
        shutil.rmtree(out)
    return [
        sys.executable,
        "-m",
        "flanmix.cli",
        "compile",
        str(spec),
        "-o",
        str(out),
        "--workers",
        str(workers),
        "--executor",
        executor,
        "--quiet",
        *(["--ray-address", address] if address else []),
    ]


def peak_rss(
    spec: Path, out: Path, workers: int, executor: str = "local", address: str | None = None
) -> tuple[float, float, int, float]:
    """(seconds, peak RSS in MiB of the compile process tree, rows, peak PSS in MiB) of a CLI
    compile. RSS sums count the pages processes share (libraries) once per process; PSS shares
    them out, so its sum is the tree's real footprint (sampled less often: it reads smaps)."""
    cmd = compile_cmd(spec, out, workers, executor, address)
    took, peak, rc, pss = watch_tree(cmd, also=ray_daemons if address else None)
    if rc != 0:
        raise SystemExit(f"compile failed ({rc}): {' '.join(cmd)}")
    rows = json.loads((out / "manifest.json").read_text())["splits"]["train"]["rows"]
    return took, peak, rows, pss


def time_cli(
    spec: Path, out: Path, workers: int, executor: str = "local", address: str | None = None
) -> float:
    """Seconds of a CLI compile, not watched: sampling the memory of a Ray's dozen processes
    every 50 ms took 4.4-5.3 CPU-s of this 2-core machine during a 20 s compile (a local tree's:
    1.2), and made the compile 2.9-3.4 s slower."""
    cmd = compile_cmd(spec, out, workers, executor, address)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode
    if rc != 0:
        raise SystemExit(f"compile failed ({rc}): {' '.join(cmd)}")
    return time.perf_counter() - start


def ray_daemons() -> list:
    """The processes of a running local Ray (started by ``ray start``: GCS, raylet, dashboard and
    agents, monitors) and what its raylets started (workers, actors), to be counted with a
    compile that runs on it."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "/tmp/ray/session_" in cmdline or "ray/core/src/ray/" in cmdline:
            found.append(proc)
    out = {p.pid: p for p in found}
    for p in found:
        with contextlib.suppress(psutil.Error):
            out.update({c.pid: c for c in p.children(recursive=True)})
    return list(out.values())


def watch_tree(cmd: list[str], also=None) -> tuple[float, float, int, float]:
    """(seconds, peak RSS in MiB of the process tree, exit status, peak PSS in MiB) of a command
    run with the repository on PYTHONPATH; the tree is sampled every 50 ms. ``also``: a function
    giving more processes to count with the tree (those of a running Ray)."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    peak = peak_pss = 0
    stop = threading.Event()

    def poll():
        nonlocal peak, peak_pss
        tick = 0
        while not stop.is_set():
            try:
                tree = [ps, *ps.children(recursive=True)]
                if also is not None:
                    seen = {p.pid for p in tree}
                    tree += [p for p in also() if p.pid not in seen]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
                if tick % 4 == 0:
                    peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in tree))
            except (psutil.Error, AttributeError):
                pass
            tick += 1
            time.sleep(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    return time.perf_counter() - start, peak / 2**20, rc, peak_pss / 2**20


def ray_start_seconds() -> float | None:
    """How long starting (and stopping) a local Ray of 2 CPUs takes, in a fresh process."""
    code = (
        "import time, logging, ray; t = time.perf_counter(); "
        "ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING); "
        "print(time.perf_counter() - t); ray.shutdown()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return float(done.stdout.split()[-1]) if done.returncode == 0 else None


RAY_ENV = {"RAY_AUTH_MODE": "token"}  # what `ray start` of Ray 2.60 asks of its clients


def start_ray_cluster() -> bool:
    """``ray start --head`` with 2 CPUs (no dashboard, no usage stats), as a user starts Ray on a
    machine before compiling on it; False if it does not start (another Ray running?)."""
    os.environ.update(RAY_ENV)
    cmd = ["ray", "start", "--head", "--num-cpus", "2", "--include-dashboard", "false"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / cmd[0]), *cmd[1:], "--disable-usage-stats"],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0


def stop_ray_cluster() -> None:
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop"], capture_output=True)


def shard_hashes(out: Path) -> dict[str, str]:
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    return {s["file"]: s["sha256"] for info in splits.values() for s in info["shards"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to skip: c, d, ray (the Ray rows of d), e, f, g, ds "
        "(datasets.map)",
    )
    args = parser.parse_args()
    from flanmix.assemble import tune_own_process

    tune_own_process()  # as `flanmix compile` does for itself: for every tool measured here
    q = args.quick
    skip = set(args.skip.split(","))
    work = args.keep or Path(tempfile.mkdtemp(prefix="flanmix-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    table: list[tuple[str, str, str]] = []
    cores = os.cpu_count()
    print(
        f"# flanmix compile benchmark ({cores} cores, python {sys.version.split()[0]}, pyarrow {pa.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} at the start)\n",
        flush=True,
    )

    # (a)-(c): 4 tasks x rows, the same rows for every measurement
    if "c" not in skip:  # (a), (b) and (c) go together
        per_task = 5_000 if q else 50_000
        lib = work / "lib_c"
        sources = make_library(lib, 4, per_task)
        first = Path(sources["t000"]) / "train.parquet"
        repeat = 1 if q else 5  # best of `repeat`: the least disturbed run of each measurement
        # the raw loop is measured first and again after each block of compiles, and its best
        # is the baseline: this VM's speed drifts within minutes, and the best of all its runs is
        # the ratio least flattering to flanmix
        raw_runs = [best_raw(raw_loop, first, work / "raw.parquet", per_task, repeat=repeat)]
        fresh = raw_side_by_side(raw_loop, first, [work / "raw.parquet"], per_task, repeat)[0]
        raw_runs.append((fresh, 0.0))  # in a forked process (with its read only)
        ps = promptsource_loop(first, 1_000 if q else 5_000)
        spec = write_spec(lib, sources, cap=per_task)
        files = [Path(s) / "train.parquet" for s in sources.values()]
        runner = DatasetsRunner() if "ds" not in skip else None
        per_core = {}
        rows_c: list[tuple] = []  # ("c", workers, rows, seconds) or ("ds", its table row)
        for w in (1, 2):
            # each tool: one untimed run at this process count first (imports, page cache, the
            # memory of fresh workers), then its timed runs in a block. Not alternated: on this
            # VM a run right after datasets.map (which frees ~1.4 GB) finds its memory reclaimed,
            # and fresh workers fault it in again (2 workers: 1.36-1.60x instead of 1.85x)
            compile_once(spec, work / "warm", w)
            runs = [compile_once(spec, work / f"c{w}", w) for _ in range(repeat)]
            ds_runs = []
            if runner:
                runner.run(files, work / "ds_warm.parquet", w)
                ds_runs = [runner.run(files, work / f"ds{w}.parquet", w) for _ in range(repeat)]
            raw_runs.append(
                best_raw(raw_loop, first, work / "raw.parquet", per_task, repeat=repeat)
            )
            took, rows = min(runs)
            per_core[w] = rows / took / w
            rows_c.append(("c", w, rows, took))  # its ratio once the raw loop's best is known
            if ds_runs:
                rows_c.append(("ds", datasets_row("(c)", w, ds_runs, rows / took)))
        if runner:
            runner.close()
        raw, raw_mem = max(r[0] for r in raw_runs), max(r[1] for r in raw_runs)
        table.append(
            (
                "(a) raw loop: read Parquet, sandboxed Jinja NLI + OPTIONS, write Parquet, 1 core "
                f"(best of {repeat} x {len(raw_runs)}: before and after each block of (c), and in a fresh "
                "process)",
                f"{raw:,.0f} rows/s",
                f"1.00x; rows already in memory: {raw_mem:,.0f} rows/s",
            )
        )
        table.append(
            (
                "(b) promptsource Template.apply, 1 core",
                f"{ps:,.0f} rows/s" if ps else "not installed",
                f"{ps / raw_mem:.3f}x of the raw loop in memory" if ps else "",
            )
        )
        for kind, *row in rows_c:
            if kind == "c":
                w, rows, took = row
                table.append(
                    (
                        f"(c) flanmix compile, {w} worker(s), {rows:,} rows (best of {repeat})",
                        f"{rows / took:,.0f} rows/s total, {per_core[w]:,.0f}/core",
                        f"{per_core[w] / raw:.2f}x per core ({per_core[w] / raw_mem:.2f}x of "
                        "the loop in memory)",
                    )
                )
            else:
                table.append(row[0])
        table.append(("(c) speed-up 1 -> 2 workers", f"{per_core[2] * 2 / per_core[1]:.2f}x", ""))

    # (d): FLAN-2021 scale
    try:
        import ray  # noqa: F401
    except ImportError:
        skip.add("ray")
        table.append(("(d) Ray executor", "ray not installed", "pip install 'flanmix[ray]'"))
    if "d" not in skip or "ray" not in skip:
        n_tasks, rows = (12, 5_000) if q else (60, 25_000)
        lib_d = work / "lib_d"
        sources_d = make_library(lib_d, n_tasks, rows)
        spec_d = write_spec(lib_d, sources_d, cap=30_000, max_rate=3_000)
    if "d" not in skip:
        took_d = {}
        for w in (1, 2):
            took_d[w], out_rows = compile_once(spec_d, work / f"flan{w}", w)
            table.append((f"(d) FLAN-2021 scale: {n_tasks} tasks, {n_tasks * rows:,} source rows, cap 30k, {w} worker(s)",
                          f"{took_d[w]:.1f} s", f"{out_rows:,} rows, {out_rows / took_d[w]:,.0f} rows/s"))  # fmt: skip
        table.append(
            ("(d) speed-up 1 -> 2 workers at FLAN scale", f"{took_d[1] / took_d[2]:.2f}x", "")
        )
    if "ray" not in skip:  # the command line, so the whole process tree is measured
        # local processes; a Ray started by the compile; a Ray already running (`ray start`, as
        # on a cluster: its processes are counted with the compile's). Best of 2 alternated.
        variants = {
            "local": ("local", None, "2 processes"),
            "ray": ("ray", None, "Ray, 2 actors, Ray started by the compile"),
            "running": (
                "ray",
                "auto",
                "Ray, 2 actors, on a running Ray (`ray start --head`, its second compile)",
            ),
        }
        # timed runs unwatched (time_cli), the memory from one watched run of each (the first
        # compile on a running Ray is its watched one: a cluster in use has compiled before)
        times: dict[str, list] = {name: [] for name in variants}
        watched: dict[str, tuple] = {}
        fresh: list[float] = []  # the first compile on a Ray just started (watched, untimed)
        for i in range(1 if q else 2):
            for name in ("local", "ray"):
                ex, address, _ = variants[name]
                out_v = work / f"flan_{name}"
                if i == 0:
                    watched[name] = peak_rss(spec_d, out_v, 2, ex, address)
                times[name].append(time_cli(spec_d, out_v, 2, ex, address))
            if start_ray_cluster():  # started and stopped around its runs, so that the other
                try:  # variants never see it
                    out_v = work / "flan_running"
                    got = peak_rss(spec_d, out_v, 2, "ray", "auto")
                    watched.setdefault("running", got)
                    fresh.append(got[0])
                    times["running"].append(time_cli(spec_d, out_v, 2, "ray", "auto"))
                finally:
                    stop_ray_cluster()
        if not times["running"]:
            del variants["running"], times["running"]
        start = ray_start_seconds()
        runs = {
            name: (min(got), watched[name][1], watched[name][2], watched[name][3])
            for name, got in times.items()
        }
        for name, (took, peak, out_rows, pss) in runs.items():
            ex, address, what = variants[name]
            counted = "process tree and the running Ray's processes" if address else "process tree"
            flag = f" --ray-address {address}" if address else ""
            table.append((f"(d) `flanmix compile --executor {ex}{flag}`, {n_tasks * rows:,} source rows, {what} (best of {len(times[name])})",
                          f"{took:.1f} s, {out_rows / took:,.0f} rows/s",
                          f"peak RSS {peak:,.0f} MiB, PSS {pss:,.0f} MiB ({counted}, a watched run)"))  # fmt: skip
        for name in variants:
            same = shard_hashes(work / "flan_local") == shard_hashes(work / f"flan_{name}")
            if name == "local":
                continue
            ratio = runs[name][0] / runs["local"][0]
            note = f"same shards (sha256): {'yes' if same else 'NO'}"
            if name == "ray" and start is not None:
                note += f"; starting Ray takes {start:.1f} s"
            if name == "running" and fresh:
                note += (
                    f"; the first compile on the just-started Ray, with its memory watched: "
                    f"{min(fresh) / runs['local'][0]:.2f}x"
                )
            label = "Ray started by the compile" if name == "ray" else "running Ray"
            table.append((f"(d) Ray / local time at FLAN scale, {label}", f"{ratio:.2f}x", note))

    # (e): peak memory at 1M and 5M source rows
    if "e" not in skip:
        for total in (200_000, 1_000_000) if q else (1_000_000, 5_000_000):
            lib_e = work / f"lib_e{total}"
            sources_e = make_library(lib_e, 10, total // 10)
            spec_e = write_spec(lib_e, sources_e, cap=None)
            took, peak, out_rows, _ = peak_rss(spec_e, work / f"mem{total}", 2)
            table.append(
                (
                    f"(e) peak RSS, {total:,} source rows, 2 workers (process tree)",
                    f"{peak:,.0f} MiB",
                    f"{took:.1f} s, {out_rows:,} rows",
                )
            )
            shutil.rmtree(lib_e, ignore_errors=True)
            shutil.rmtree(work / f"mem{total}", ignore_errors=True)

    # (f): long rows, zero-shot and few-shot: in a warm process as (c), then from the command line
    if "f" not in skip:
        per_task = 1_000 if q else 12_500
        repeat = 1 if q else 3
        lib_f = work / "lib_f"
        sources_f = make_library(lib_f, 4, per_task, words=520)
        first = Path(sources_f["t000"]) / "train.parquet"
        files_f = [Path(s) / "train.parquet" for s in sources_f.values()]
        loops = {0: raw_loop, 4: raw_few_loop}
        # as in (a): the raw loops first and again after each block of compiles, the best kept
        raw_f_runs = {
            k: [best_raw(loop, first, work / "raw_f.parquet", per_task, repeat=repeat)]
            for k, loop in loops.items()
        }
        outs = [work / "raw_f1.parquet", work / "raw_f2.parquet"]
        side = {
            0: raw_side_by_side(raw_loop, first, outs, per_task, repeat),
            4: raw_side_by_side(raw_few_loop, first, outs, per_task, repeat),
        }
        for k, loop in loops.items():  # and in one fresh process
            fresh = raw_side_by_side(loop, first, outs[:1], per_task, repeat)[0]
            raw_f_runs[k].append((fresh, 0.0))
        rows_f: list[tuple] = []  # ("f", name, k, workers, rows, seconds, kB) or ("ds", row)
        runner = DatasetsRunner() if "ds" not in skip else None
        shapes = (("long zero-shot", 0.0), ("few-shot k=4 (~18 kB)", 1.0))
        specs_f = {}
        for name, few in shapes:
            formats = {"few_shot": few, "k": 4, "max_length": 20_000, "options": 0.9}
            spec_f = write_spec(lib_f, sources_f, cap=per_task, formats=formats)
            specs_f[name] = spec_f.rename(lib_f / f"spec_{int(few)}.yaml")
        ds_out = work / "ds_long.parquet"
        for name, few in shapes:
            k = 4 if few else 0
            for w in (1, 2):
                compile_once(specs_f[name], work / "long", w)  # untimed first runs, as in (c)
                runs = [compile_once(specs_f[name], work / "long", w) for _ in range(repeat)]
                ds_runs = []
                if runner:
                    runner.run(files_f, ds_out, w, k)
                    ds_runs = [runner.run(files_f, ds_out, w, k) for _ in range(repeat)]
                took, rows = min(runs)
                kb = mean_input_kb(sorted((work / "long").glob("train*.parquet")))
                rows_f.append(("f", name, k, w, rows, took, kb))
                if ds_runs:
                    note = f"; inputs {mean_input_kb([ds_out]):.1f} kB"
                    rows_f.append(
                        ("ds", datasets_row(f"(f) {name}:", w, ds_runs, rows / took, note))
                    )
                raw_f_runs[k].append(
                    best_raw(loops[k], first, work / "raw_f.parquet", per_task, repeat=repeat)
                )
        if runner:
            runner.close()
        raw_f = {k: (max(r[0] for r in v), max(r[1] for r in v)) for k, v in raw_f_runs.items()}
        for k, shape in ((0, "long rows (~3.7 kB)"), (4, "few-shot rows k=4 (~18 kB)")):
            table.append((f"(f) raw loop with its read, {shape}, 1 core (best of {repeat} x {len(raw_f_runs[k])}: before and after each block, and in a fresh process)",
                          f"{raw_f[k][0]:,.0f} rows/s",
                          f"1.00x; rows already in memory: {raw_f[k][1]:,.0f} rows/s"))  # fmt: skip
            table.append((f"(f) raw loop with its read, {shape}, 2 processes side by side (best of {repeat} each)",
                          " and ".join(f"{r:,.0f}" for r in side[k]) + " rows/s",
                          " and ".join(f"{r / raw_f[k][0]:.2f}x" for r in side[k]) + " of one process"))  # fmt: skip
        for kind, *row in rows_f:
            if kind != "f":
                table.append(row[0])
                continue
            name, k, w, rows, took, kb = row
            table.append((f"(f) {name}, {rows:,} rows, {w} worker(s) (best of {repeat})",
                          f"{rows / took:,.0f} rows/s total, {rows / took / w:,.0f}/core",
                          f"{rows / took / w / raw_f[k][0]:.2f}x raw per core ({rows / took / w / raw_f[k][1]:.2f}x in memory"
                          + (f"; {rows / took / w / (sum(side[k]) / 2):.2f}x of the raw loops side by side" if w == 2 else "")
                          + f"); inputs {kb:.1f} kB"))  # fmt: skip
        # the same from the command line (starting Python included), for the peak RSS of the
        # whole process tree: best time of 2 alternated runs, the largest peak seen
        for name, few in shapes:
            k = 4 if few else 0
            for w in (1, 2):
                fm_runs, ds_runs = [], []
                for _ in range(1 if q else 2):
                    fm_runs.append(peak_rss(specs_f[name], work / "long", w))
                    if "ds" not in skip:
                        ds_runs.append(datasets_tree(files_f, ds_out, w, k))
                took, rows = min(r[0] for r in fm_runs), fm_runs[0][2]
                peak = max(r[1] for r in fm_runs)
                note = ""
                if ds_runs:
                    ds_took, ds_rows = min(r[0] for r in ds_runs), ds_runs[0][2]
                    ds_peak = max(r[1] for r in ds_runs)
                    note = (f"datasets.map: {ds_rows / ds_took:,.0f} rows/s, peak RSS {ds_peak:,.0f} MiB; "
                            f"flanmix / datasets.map: {rows / took / (ds_rows / ds_took):.2f}x")  # fmt: skip
                table.append((f"(f) command line: {name}, {rows:,} rows, {w} worker(s)",
                              f"{rows / took:,.0f} rows/s, peak RSS {peak:,.0f} MiB", note))  # fmt: skip
        shutil.rmtree(lib_f, ignore_errors=True)

    # (g): one source of long rows as one row group (what pyarrow and pandas write by default,
    # up to a million rows) and as 1,000-row groups (what `datasets` writes): the command line,
    # 2 workers, best time of 2 alternated runs, the largest peak seen
    if "g" not in skip:
        n_g = 10_000 if q else 100_000
        lib_g = work / "lib_g"
        sources_g = make_library(lib_g, 1, n_g, words=520)
        rows_g = pq.read_table(Path(sources_g["t000"]) / "train.parquet")
        layouts = {"one row group": None, "1,000-row groups": 1_000}
        specs_g = {}
        for i, (layout, group) in enumerate(layouts.items()):
            folder = lib_g / "data" / f"layout{i}"
            folder.mkdir(parents=True)
            pq.write_table(rows_g, folder / "train.parquet", row_group_size=group)
            spec = write_spec(lib_g, {"t000": str(folder)}, cap=n_g, formats={"options": 0.9})
            specs_g[layout] = spec.rename(lib_g / f"spec_g{i}.yaml")
        mb = pq.ParquetFile(lib_g / "data" / "layout0" / "train.parquet").metadata
        size = mb.row_group(0).total_byte_size / 2**20
        del rows_g
        tries_g: dict[str, list] = {layout: [] for layout in layouts}
        for _ in range(1 if q else 2):
            for layout in layouts:
                tries_g[layout].append(peak_rss(specs_g[layout], work / "layout", 2))
        best_g = {k: min(r[0] for r in v) for k, v in tries_g.items()}
        for layout, got in tries_g.items():
            took, rows = best_g[layout], got[0][2]
            what = f"one row group of {size:,.0f} MiB" if layouts[layout] is None else layout
            note = (
                f"{took / best_g['1,000-row groups']:.2f}x the time of 1,000-row groups"
                if layouts[layout] is None
                else ""
            )
            table.append((f"(g) command line: {n_g:,} long rows (~3.7 kB) in {what}, 2 workers",
                          f"{took:.1f} s, {rows / took:,.0f} rows/s, peak RSS {max(r[1] for r in got):,.0f} MiB",
                          note))  # fmt: skip
        shutil.rmtree(lib_g, ignore_errors=True)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load}\n")
    print("| measurement | result | ratio / notes |")
    print("|---|---:|---:|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
