"""A mixture's eval split as lm-evaluation-harness tasks (``flanmix export MIX --format lm-eval``).

``lm_eval --model hf --model_args pretrained=DIR --include_path DEST --tasks flanmix_<cluster>``
then scores the held-out clusters the way ``flanmix evaluate`` does, offline. DEST holds:

- ``data/<task>.jsonl``: the eval rows of each lm-eval task, with ``inputs``, ``prompt`` (what a
  causal model is conditioned on in training: inputs plus a newline), ``options``/``answer_index``,
  ``targets``, ``references`` (every accepted answer), the template id, and which metrics to report;
- ``<task>.yaml``: one lm-eval task per held-out flanmix task, over all its non-inverted templates
  (``multiple_choice`` for options rows, ``generate_until`` otherwise), plus one task per task for
  its turned-around templates (``<task>_inverted``), reported on their own;
- ``<cluster>.yaml``: one group per held-out cluster whose ``score`` is the mean of its tasks'
  scores (turned-around templates excluded);
- ``utils.py``: the metrics (a copy of ``flanmix.lm_eval_utils``), each averaged per template first;
- ``flanmix_lm_eval.json``: what was exported, from which mixture (it marks DEST as made by
  flanmix: like every flanmix output, DEST goes through :func:`flanmix.publish.claim`, so
  ``--overwrite`` replaces only a folder flanmix made, and a second writer of DEST fails "in use").

Why one lm-eval task per flanmix task and not per template: the harness averages a group over its
leaf tasks, so per-template leaves would weigh tasks by their number of templates. Here a task's
metrics are averaged over its templates inside the task (``utils.template_mean``), and the cluster
group averages tasks, which is FLAN's aggregation.

Options are scored as the harness scores them: the log-likelihood of ``"\\n" + option`` given the
inputs, which is flanmix's rank-classification score (see ``flanmix.evaluate.rank_classify``).
Data paths in the YAMLs are absolute (they work from any directory); move DEST and export again.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .errors import FlanmixError, Location
from .publish import check_out, claim, staging, write_marker

MARKER = "flanmix_lm_eval.json"
SEPARATOR = "\n"  # flanmix.models.SEPARATOR, kept here so exporting does not import torch
UTILS_SOURCE = Path(__file__).with_name("lm_eval_utils.py")

#: Row ``metrics`` names -> the metric the export reports for them.
METRIC_NAMES = {
    "exact_match": "exact_match",
    "em": "exact_match",
    "squad": "exact_match",
    "f1": "f1",
    "rouge": "rougeL",
    "rouge_l": "rougeL",
    "rougel": "rougeL",
    "rouge1": "rouge1",
    "rouge_1": "rouge1",
    "rouge2": "rouge2",
    "rouge_2": "rouge2",
    "bleu": "bleu",
    "sacrebleu": "bleu",
}
GEN_ORDER = ("exact_match", "f1", "rouge1", "rouge2", "rougeL", "bleu")


class LmEvalExportError(FlanmixError):
    """An lm-eval export that cannot be written."""


def _name(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", "_".join(parts)).strip("_")


def _is_options(row: dict[str, Any]) -> bool:
    return bool(row.get("options")) and row.get("answer_index") is not None


def _is_cot(row: dict[str, Any]) -> bool:
    """A chain-of-thought row (``flanmix.evaluate.is_cot_row``): scored on its final answer."""
    return row.get("format") in ("cot", "fs_cot")


def gen_metrics(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(primary metric, metrics to report) of generation rows: EM and F1 always, ROUGE or BLEU
    when the rows' ``metrics`` name them; the primary is the first named (ROUGE-L by default).
    Chain-of-thought rows score exact match on their final answers (the primary when every row is
    one) and report ``answer_found``, the share of predictions that give one."""
    named: list[str] = []
    for row in sorted(rows, key=_is_cot):  # the other rows' metrics first: they give the primary
        for m in row.get("metrics") or []:
            key = METRIC_NAMES.get(m.lower())
            if key and key not in named:
                named.append(key)
    cot = [_is_cot(row) for row in rows]
    primary = "exact_match" if all(cot) else named[0] if named else "rougeL"
    wanted = {"exact_match", "f1", primary, *named}
    return primary, [m for m in GEN_ORDER if m in wanted] + (["answer_found"] if any(cot) else [])


def decode_budget(rows: list[dict[str, Any]], floor: int = 16, cap: int = 512) -> int:
    """New tokens to generate: the 95th percentile of the references' length, at ~2 characters a
    token (generous for small vocabularies), between ``floor`` and ``cap``."""
    lengths = sorted(len(r) for row in rows for r in _references(row))
    if not lengths:
        return floor
    p95 = lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)]
    return max(floor, min(cap, math.ceil(p95 / 2)))


def _references(row: dict[str, Any]) -> list[str]:
    return row.get("references") or [row["targets"]]


def _q(value: Any) -> str:
    """A YAML scalar (JSON is valid YAML for strings, numbers, lists and booleans)."""
    return json.dumps(value, ensure_ascii=False)


def _task_yaml(leaf: dict[str, Any], data_file: Path) -> str:
    lines = [
        f"# Written by flanmix export --format lm-eval: {leaf['kind']} rows of {leaf['task']!r}"
        f" ({'turned-around' if leaf['inverted'] else 'non-inverted'} templates).",
        f"task: {leaf['name']}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {_q(str(data_file))}",
        "test_split: test",
        "num_fewshot: 0",
    ]
    if leaf["kind"] == "options":
        lines += [
            "output_type: multiple_choice",
            "doc_to_text: inputs",
            "doc_to_choice: options",
            "doc_to_target: answer_index",
            f"target_delimiter: {_q(SEPARATOR)}",
            "process_results: !function utils.process_options",
            "metric_list:",
        ]
        metrics = [("acc", "template_mean"), ("acc_norm", "template_mean")]
    else:
        lines += [
            "output_type: generate_until",
            "doc_to_text: prompt",
            "doc_to_target: targets",
            "generation_kwargs:",
            "  until: []",
            "  do_sample: false",
            f"  max_gen_toks: {leaf['max_gen_toks']}",
            "process_results: !function utils.process_generation",
            "metric_list:",
        ]
        metrics = [
            (m, "template_bleu" if m == "bleu" else "template_mean") for m in leaf["metrics"]
        ]
    if leaf["scored"]:  # each template's own primary metric, then the mean over templates
        metrics.append(("score", "template_score"))
    for metric, agg in metrics:
        lines += [
            f"  - metric: {metric}",
            f"    aggregation: !function utils.{agg}",
            "    higher_is_better: true",
        ]
    meta = {
        "version": 1,
        "flanmix_task": leaf["task"],
        "cluster": leaf["cluster"],
        "primary_metric": leaf["primary"],
        "templates": leaf["templates"],
    }
    lines += ["metadata:"] + [f"  {k}: {_q(v)}" for k, v in meta.items()]
    return "\n".join(lines) + "\n"


def _group_yaml(name: str, cluster: str, tasks: list[str]) -> str:
    lines = [
        f"# Written by flanmix export --format lm-eval: held-out cluster {cluster!r}. Its score is the",
        "# mean of its tasks' scores (each the mean over the task's non-inverted templates);",
        "# the *_inverted tasks are reported on their own and have no score.",
        f"group: {name}",
        "task:",
        *[f"  - {t}" for t in tasks],
        "aggregate_metric_list:",
        "  - metric: score",
        "    weight_by_size: false",
        "metadata:",
        "  version: 1",
    ]
    return "\n".join(lines) + "\n"


def plan_leaves(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Group eval rows into lm-eval tasks: per flanmix task, its non-inverted rows of the kind most
    of its templates have (the task's score), and apart from those any other kind and the
    turned-around templates."""
    by_key: dict[tuple[str, str, bool], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        kind = "options" if _is_options(row) else "generation"
        by_key[(row["task"], kind, bool(row["inverted"]))].append(row)
    scored_kind: dict[str, str] = {}
    for task in {t for t, _, _ in by_key}:
        counts = Counter(
            {
                kind: len({r["template_id"] for r in by_key.get((task, kind, False), [])})
                for kind in ("options", "generation")
            }
        )
        if sum(counts.values()):
            scored_kind[task] = max(counts, key=lambda k: (counts[k], k == "options"))
    leaves = []
    for (task, kind, inverted), leaf_rows in sorted(by_key.items()):
        scored = not inverted and scored_kind.get(task) == kind
        suffix = (
            []
            if scored
            else (["inverted"] if inverted else [])
            + ([] if inverted and kind == "generation" else [kind])
        )
        if kind == "options":
            primary, metrics = "acc", ["acc", "acc_norm"]
        else:
            primary, metrics = gen_metrics(leaf_rows)
        leaves.append(
            {
                "name": _name(prefix, task, *suffix),
                "task": task,
                "cluster": leaf_rows[0]["cluster"],
                "kind": kind,
                "inverted": inverted,
                "scored": scored,
                "primary": primary,
                "metrics": metrics,
                "templates": sorted({r["template_id"] for r in leaf_rows}),
                "max_gen_toks": decode_budget(leaf_rows) if kind == "generation" else None,
                "rows": leaf_rows,
            }
        )
    return leaves


def _doc(row: dict[str, Any], leaf: dict[str, Any]) -> dict[str, Any]:
    doc = {
        "example_id": row["example_id"],
        "template_id": row["template_id"],
        "inputs": row["inputs"],
        "prompt": row["inputs"] + SEPARATOR,
        "targets": row["targets"],
        "references": _references(row),
        "primary_metric": "exact_match" if _is_cot(row) else leaf["primary"],
        "report_metrics": leaf["metrics"],
        "scored": leaf["scored"],
    }
    if leaf["kind"] == "generation":
        doc["cot"] = _is_cot(row)
    if leaf["kind"] == "options":
        doc["options"] = list(row["options"])
        doc["answer_index"] = int(row["answer_index"])
    return doc


def export_lm_eval(
    mixture_dir: str | Path,
    dest: str | Path,
    *,
    prefix: str = "flanmix",
    overwrite: bool = False,
    verify: bool = True,
) -> dict[str, Any]:
    """Write the eval split of a mixture as lm-eval tasks and cluster groups; returns a summary
    ``{"groups": {group: [task, ...]}, "tasks": {task: rows}, "path": DEST}``."""
    from .verify import open_verified

    mixture = open_verified(mixture_dir, verify=verify)  # re-hashed: the scores rest on it
    dest = Path(os.path.abspath(dest))
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", prefix):
        raise LmEvalExportError(
            f"task prefix {prefix!r} is not a valid lm-eval name", hint="letters, digits and _"
        )
    # flanmix's output guard (flanmix.publish): a new DEST, or with --overwrite one flanmix made;
    # checked now to fail before reading rows, and again under DEST's lock before writing
    guard = dict(
        overwrite=overwrite,
        protect=[mixture.path],
        what="the lm-eval export",
        error=LmEvalExportError,
    )
    check_out(dest, **guard)
    rows = list(mixture.iter_rows("eval")) if mixture.shards("eval") else []
    if not rows:
        raise LmEvalExportError(
            "the mixture has no eval split (no held-out cluster?)",
            location=Location(file=str(mixture.path)),
        )
    for row in rows:  # the contract: every eval row lists its references, target first
        if "references" not in row:
            raise LmEvalExportError(
                "the mixture has no references column (compiled by an older flanmix)",
                location=Location(file=str(mixture.path)),
                hint="compile the mixture again",
            )
        if not row["references"]:
            raise LmEvalExportError(
                f"eval row {row['example_id']} has no references",
                location=Location(
                    file=str(mixture.path), task=row["task"], template=row["template_id"]
                ),
            )
    leaves = plan_leaves(rows, prefix)
    groups: dict[str, list[str]] = defaultdict(list)
    # one writer; DEST (what a link there points to) replaced only at the end
    with claim(dest, **guard) as dest, staging(dest) as tmp:
        (tmp / "data").mkdir()
        for leaf in leaves:
            with open(tmp / "data" / f"{leaf['name']}.jsonl", "w", encoding="utf-8") as fh:
                for row in leaf["rows"]:
                    fh.write(json.dumps(_doc(row, leaf), ensure_ascii=False) + "\n")
            data_file = dest / "data" / f"{leaf['name']}.jsonl"  # where it will be once published
            (tmp / f"{leaf['name']}.yaml").write_text(_task_yaml(leaf, data_file), encoding="utf-8")
            groups[_name(prefix, leaf["cluster"])].append(leaf["name"])
        for group, tasks in groups.items():
            if group in {leaf["name"] for leaf in leaves}:
                raise LmEvalExportError(f"cluster group {group!r} has the name of a task")
            cluster = next(leaf["cluster"] for leaf in leaves if leaf["name"] == tasks[0])
            (tmp / f"{group}.yaml").write_text(_group_yaml(group, cluster, tasks), encoding="utf-8")
        shutil.copyfile(UTILS_SOURCE, tmp / "utils.py")
        summary = {
            "mixture": str(mixture.path),
            "prefix": prefix,
            "groups": dict(groups),
            "tasks": {leaf["name"]: len(leaf["rows"]) for leaf in leaves},
        }
        (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(summary, dest), encoding="utf-8")
        write_marker(
            tmp, "lm-eval"
        )  # its files listed as it is published: what --overwrite replaces
    return {**summary, "path": str(dest)}


def _readme(summary: dict[str, Any], dest: Path) -> str:
    groups = ", ".join(sorted(summary["groups"]))
    return "\n".join(
        [
            "# lm-evaluation-harness tasks exported by flanmix",
            "",
            f"Held-out eval split of `{summary['mixture']}`: {len(summary['tasks'])} tasks in "
            f"the groups {groups}.",
            "",
            "```",
            f"lm_eval --model hf --model_args pretrained=MODEL_DIR --include_path {dest} "
            f"--tasks {sorted(summary['groups'])[0]}",
            "```",
            "",
            "Scores are 0-100, averaged over each task's templates; a group's `score` is the mean "
            "of its tasks' scores. Data paths in the YAMLs are absolute: export again after moving "
            "this folder.",
            "",
        ]
    )
