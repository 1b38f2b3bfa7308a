"""Benchmark of the NIv2 path at the repository's scale: import, compile, peak memory.

Generates an NIv2-shaped tree (``tasks/*.json`` + ``splits/default``) in a temporary folder:
``--tasks`` files (default 1,600, as the repository) whose sizes follow a seeded log-normal draw
(median ~1 MB, at most ~5 MB: most real files), plus ``--huge`` files near 100 MB (the repository
has a few dozen; two by default keep the run to minutes on 2 cores). Categories cycle through
flanmix/data/niv2_categories.yaml, a fifth of the tasks are German (skipped by the English-only
filter), and task numbers 664-667 and 685-737 fall in FLAN v2's MMLU exclusion, as in the real tree.

It then measures, each as a subprocess whose process tree's RSS is polled:

(a) ``flanmix import natural-instructions`` of the whole tree (every instance is read and checked);
(b) ``flanmix compile mixtures/niv2.yaml`` on the imported folder: cap 5,000 rows per task, rows
    streamed from the JSON files, ``--workers`` processes;
(c) the raw render loop on one core: the ten NIv2 templates compiled once in a plain sandboxed
    Jinja environment, rows already in memory, rendered round-robin and written to Parquet in
    10k-row batches. Compile per core (rows/s / workers) is reported as a ratio to it.

Usage: python benchmarks/bench_niv2.py [--tasks N] [--huge N] [--workers N] [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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
    "bridge",
    "market",
    "garden",
    "winter",
    "summer",
    "morning",
    "evening",
    "lantern",
    "kettle",
    "map",
    "bicycle",
    "window",
    "letter",
    "answer",
    "question",
    "story",
    "reader",
    "writer",
    "island",
    "forest",
    "road",
]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_task(path: Path, number: int, category: str, german: bool, instances: int, width: int):
    """One NIv2 task file of ``instances`` instances of about ``width`` characters each."""
    rng = random.Random(number)
    name = path.stem
    head = {
        "Contributors": ["bench"],
        "Source": ["synthetic"],
        "URL": ["https://example.org"],
        "Categories": [category],
        "Reasoning": [],
        "Definition": ["In this task you read a passage. " + _text(rng, 60) + "."],
        "Input_language": ["English"],
        "Output_language": ["German" if german else "English"],
        "Instruction_language": ["English"],
        "Domains": ["News"],
        "Positive Examples": [
            {"input": _text(rng, 40), "output": _text(rng, 4), "explanation": _text(rng, 20)}
            for _ in range(3)
        ],
        "Negative Examples": [
            {"input": _text(rng, 40), "output": _text(rng, 4), "explanation": _text(rng, 20)}
        ],
    }
    words = max(5, width // 7)
    pool = [_text(rng, words) for _ in range(64)]  # varied text without a draw per instance
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(head, indent=4)[:-2] + ',\n    "Instances": [\n')
        for i in range(instances):
            sep = ",\n" if i else ""
            body = pool[i % 64]
            f.write(
                f'{sep}        {{"id": "{name}-{i:05d}", "input": "{i} {body}", '
                f'"output": ["{pool[(i * 7) % 64][:30]}", "{i}"]}}'
            )
        f.write('\n    ],\n    "Instance License": ["Unknown"]\n}\n')


def make_tree(root: Path, n_tasks: int, n_huge: int, seed: int = 0) -> dict:
    from flanmix.niv2 import load_tables

    cats = list(load_tables().categories)
    test_cats = {
        "Textual Entailment",
        "Cause Effect Classification",
        "Coreference Resolution",
        "Dialogue Act Recognition",
        "Answerability Classification",
        "Word Analogy",
        "Overlap Extraction",
        "Keyword Tagging",
        "Question Rewriting",
        "Title Generation",
        "Data to Text",
        "Grammar Error Correction",
    }
    rng = random.Random(seed)
    tasks = root / "tasks"
    tasks.mkdir(parents=True)
    train, test, sizes = [], [], []
    for k in range(n_tasks):
        number = k + 1
        cat = cats[k % len(cats)]
        german = rng.random() < 0.2
        if k < n_huge:
            instances, width = 100_000, 900  # ~100 MB
        else:
            instances = int(min(6500, max(50, math.exp(rng.gauss(math.log(1800), 0.9)))))
            width = rng.choice([300, 500, 700])
        name = f"task{number:03d}_bench_{cat.lower().replace(' ', '_').replace('.', '')}"
        path = tasks / f"{name}.json"
        write_task(path, number, cat, german, instances, width)
        sizes.append(path.stat().st_size)
        if not german:
            (test if cat in test_cats else train).append(name)
    split = root / "splits" / "default"
    split.mkdir(parents=True)
    (split / "train_tasks.txt").write_text("\n".join(train) + "\n")
    (split / "test_tasks.txt").write_text("\n".join(test) + "\n")
    (split / "excluded_tasks.txt").write_text("")
    sizes.sort()
    return {
        "files": n_tasks,
        "bytes": sum(sizes),
        "median_mb": sizes[len(sizes) // 2] / 2**20,
        "under_5mb": sum(s < 5 * 2**20 for s in sizes),
        "max_mb": sizes[-1] / 2**20,
    }


def run_polled(cmd: list[str]) -> tuple[float, float, float, str]:
    """(seconds, CPU seconds, peak RSS in MiB of the process tree, stdout) of a command.

    CPU seconds (user + system of the command and every worker it waited for) are what the
    per-core comparison uses: on a shared machine wall time measures the neighbours too.
    """
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    stop = threading.Event()

    def poll():
        nonlocal peak
        while not stop.is_set():
            try:
                total = ps.memory_info().rss + sum(
                    c.memory_info().rss for c in ps.children(recursive=True)
                )
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, _ = proc.communicate()
    stop.set()
    th.join()
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return took, cpu, peak / 2**20, out


def raw_loop(catalog: Path, out: Path, n: int) -> float:
    """Rows/s of the raw loop: the ten templates precompiled, rows in memory, one core."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from flanmix.catalog import load_catalog
    from flanmix.niv2 import TEMPLATES, read_rows

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    compiled = [
        (env.from_string(t["input"]), env.from_string("{{ output[0] }}")) for t in TEMPLATES
    ]
    cat = load_catalog(catalog)
    rows: list[dict] = []
    for tid in sorted(cat.tasks):
        tf = cat.task_file(tid)
        if tf.task.metadata["niv2"]["split"] != "train":
            continue
        path = (tf.path.parent / tf.task.source.niv2.file).resolve()
        rows += read_rows(path, range(min(5000, tf.task.source.niv2.instances)))
        if len(rows) >= n:
            break
    rows = rows[:n]
    schema = pa.schema([("inputs", pa.string()), ("targets", pa.string())])
    start = time.process_time()  # CPU seconds of this (single-threaded) loop
    with pq.ParquetWriter(str(out), schema) as writer:
        for b in range(0, len(rows), 10_000):
            inputs, targets = [], []
            for j, row in enumerate(rows[b : b + 10_000]):
                t_in, t_out = compiled[(b + j) % len(compiled)]
                inputs.append(t_in.render(row).strip())
                targets.append(t_out.render(row).strip())
            writer.write_table(pa.table({"inputs": inputs, "targets": targets}, schema=schema))
    return len(rows) / (time.process_time() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1600)
    ap.add_argument("--huge", type=int, default=2, help="files near 100 MB (default 2)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="160 tasks, 1 huge file")
    ap.add_argument("--keep", type=Path, default=None, help="work here and keep the files")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.huge = 160, 1
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_niv2_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        info = make_tree(work / "niv2", args.tasks, args.huge)
        gen = time.perf_counter() - t0
        print(
            f"generated {info['files']} files, {info['bytes'] / 2**30:.2f} GiB "
            f"(median {info['median_mb']:.2f} MB, {info['under_5mb']} under 5 MB, "
            f"largest {info['max_mb']:.0f} MB) in {gen:.0f}s",
            flush=True,
        )
        flanmix = [sys.executable, "-m", "flanmix.cli"]
        cat = work / "niv2_tasks"
        t_imp, cpu_imp, rss_imp, out = run_polled(
            [
                *flanmix,
                "import",
                "natural-instructions",
                str(work / "niv2" / "tasks"),
                "-o",
                str(cat),
            ]
        )
        print(out.strip(), flush=True)
        mix = work / "mix"
        t_cmp, cpu_cmp, rss_cmp, out = run_polled(
            [
                *flanmix,
                "compile",
                str(REPO / "mixtures" / "niv2.yaml"),
                "--root",
                str(cat),
                "-o",
                str(mix),
                "--workers",
                str(args.workers),
                "--quiet",
            ]
        )
        print(out.strip(), flush=True)
        manifest = json.loads((mix / "manifest.json").read_text())
        train = manifest["splits"]["train"]["rows"]
        evals = manifest["splits"].get("eval", {}).get("rows", 0)
        raw = raw_loop(cat, work / "raw.parquet", 50_000)
        per_core = (train + evals) / cpu_cmp  # rows per CPU second
        gib = info["bytes"] / 2**30
        print()
        print("| step | what | wall | CPU | rows per CPU s | peak RSS |")
        print("|---|---|---|---|---|---|")
        print(
            f"| import | {info['files']} files, {gib:.2f} GiB, every instance read | "
            f"{t_imp:.0f} s | {cpu_imp:.0f} s ({gib * 1024 / cpu_imp:.0f} MB per CPU s) | | "
            f"{rss_imp:.0f} MiB |"
        )
        print(
            f"| compile | cap 5,000/task: {train:,} train + {evals:,} eval rows, "
            f"{args.workers} workers | {t_cmp:.0f} s | {cpu_cmp:.0f} s | {per_core:,.0f} | "
            f"{rss_cmp:.0f} MiB |"
        )
        print(f"| raw render loop | 50,000 rows in memory, 1 core | | | {raw:,.0f} | |")
        print(f"| compile / raw loop, per core | | | | **{per_core / raw:.2f}x** | |")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
