"""Reporting on a published mixture: the composition report of ``flanmix inspect`` and its plots.

Both read only the manifest (:class:`~flanmix.mixture.Mixture`); dataset cards are
:mod:`flanmix.card`.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import CompileError, Location, MixtureError
from .mixture import MANIFEST, Manifest, Mixture

#: Manifest keys the composition report reads.
REPORT_KEYS = (
    "name", "flanmix_version", "seed", "file_format", "holdout", "splits", "counts", "dropped",
    "tasks",
)  # fmt: skip


def composition_report(mixture_dir: str | Path) -> str:
    """The composition of a published mixture, from its manifest (rows per cluster, task, format ...)."""
    from .verify import manifest_problems

    mixture = Mixture.open(mixture_dir)
    raw = mixture.manifest
    problems = manifest_problems(raw)
    missing = [k for k in REPORT_KEYS if not isinstance(raw, dict) or raw.get(k) is None]
    if problems or missing:
        raise MixtureError(
            "manifest.json is incomplete: "
            + (problems[0] if problems else "no " + ", ".join(repr(k) for k in missing)),
            location=Location(file=str(Path(mixture_dir) / MANIFEST)),
            hint="recompile the mixture; 'flanmix verify' lists what is wrong",
        )
    gone = [  # the composition of shards that are not there is not the mixture's
        s["file"]
        for split in ("train", "eval")
        for s in mixture.shards(split)
        if not (mixture.path / s["file"]).is_file()
    ]
    if gone:
        raise MixtureError(
            f"shard {gone[0]} is missing" + (f" (and {len(gone) - 1} more)" if gone[1:] else ""),
            location=Location(file=str(mixture.path)),
            hint="'flanmix verify' lists what is wrong; compile the mixture again",
        )
    m = mixture.info
    lines = [
        f"mixture {m.name}  (flanmix {m.flanmix_version}, seed {m.seed}, {m.file_format})",
    ]
    if m.offline or m.uses_samples:
        why = "offline" if m.offline else "some sources unreachable"
        lines.append(f"NOTE: rows come from the task files' samples ({why}), not the real datasets")
    held = m.holdout  # not None: a REPORT_KEYS key
    lines.append("held out: " + (", ".join(held.clusters or held.tasks) or "nothing"))
    if held.removed_for_overlap:
        lines.append(
            "removed from training (overlap): "
            + ", ".join(f"{t} ({g})" for t, g in held.removed_for_overlap.items())
        )
    if m.missing_tasks:
        lines.append(
            f"skipped, no task file ({len(m.missing_tasks)}): " + ", ".join(m.missing_tasks)
        )
    for key, why in m.skipped_tasks.items():
        split, task = key.split(":", 1)
        lines.append(f"no {split} rows from {task}: {why}")
    for key, info in m.tasks.items():  # planned, but every row dropped (unlabeled, skipped)
        if info.planned and not info.rows and key not in m.skipped_tasks:
            lines.append(
                f"no {info.role} rows from {info.task}: all {info.planned} planned rows were "
                f"dropped (reasons under 'dropped' in manifest.json)"
            )
    for split in ("train", "eval"):
        info = m.splits.get(split)
        if info is None:
            continue
        total = info.rows or 1
        lines.append("")
        lines.append(f"{split}: {info.rows} rows in {len(info.shards)} shard(s)")
        counts = m.counts[split]
        for key in ("cluster", "task", "format"):
            lines.append(f"  by {key}:")
            for name, n in sorted(counts[key].items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"    {name:<34} {n:>9}  {100 * n / total:5.1f}%")
        lines.append(f"  templates: {len(counts['template'])}")
        if m.dropped.get(split):
            lines.append("  dropped:")
            for reason, n in sorted(m.dropped[split].items(), key=lambda kv: -kv[1]):
                lines.append(f"    {reason:<50} {n:>9}")
        fallback = m.few_shot_fallback.get(split)
        if fallback:  # few-shot asked, no exemplar fit max_length
            lines.append(
                f"  few-shot examples written zero-shot (no exemplar, or none within max_length): "
                f"{sum(fallback.values())} ("
                + ", ".join(f"{t} {n}" for t, n in sorted(fallback.items(), key=lambda kv: -kv[1]))
                + ")"
            )
    lines.append("")
    kinds = Counter(t.source for t in m.tasks.values())
    if len(kinds) == 1:
        ((source, n),) = kinds.items()
        lines.append(f"sources: {source} for all {n} tasks")
    else:
        lines.append("sources:")
        for t in m.tasks.values():
            lines.append(f"  {t.role:<5} {t.task:<28} {t.source}")
    return "\n".join(lines)


#: What ``--plot`` writes, by the file's suffix (none: ``.png`` is added)
PLOT_FORMATS = (".png", ".svg", ".pdf")


def plot_target(path: str | Path) -> Path:
    """Where a plot asked for at ``path`` is written: a new file (an existing one is never
    replaced: flanmix cannot tell a chart it drew from a user's file of that name) whose suffix
    names a format matplotlib writes (``.png`` added when there is none); its folder is created."""
    from .publish import OutputError, ensure_parent

    given = str(path)
    if not given.strip():
        raise OutputError("plot path is empty", hint="name a file, e.g. mix.png")
    target = Path(os.path.abspath(path))
    if target.is_dir():
        raise OutputError(
            "is a folder", location=Location(file=given), hint="name a file, e.g. mix.png"
        )
    if not target.suffix:
        target = target.with_name(target.name + ".png")
    if target.suffix.lower() not in PLOT_FORMATS:
        raise OutputError(
            f"cannot plot to a {target.suffix} file",
            location=Location(file=given),
            hint="use " + ", ".join(PLOT_FORMATS),
        )
    if target.exists() or target.is_symlink():
        raise OutputError(
            f"{target.name} exists: not replacing it",
            location=Location(file=given),
            hint="choose a new file name, or remove that file first",
        )
    ensure_parent(target, given)
    return target


def plot_composition(mixture_dir: str | Path, path: str | Path) -> Path:
    """Save bar charts of the rows per cluster, format and task, for the train and the eval split,
    each bar labelled with its count (needs matplotlib), to a new file (:func:`plot_target`);
    returns where. The chart is drawn into a temporary file beside it and linked into place, so
    an interrupted plot leaves nothing and a file made meanwhile is not replaced."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CompileError("plotting needs matplotlib", hint="pip install matplotlib") from exc
    from .publish import OutputError, os_error

    target = plot_target(path)
    fig = composition_figure(Mixture.open(mixture_dir).info, plt)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}{target.suffix}")
    try:
        fig.savefig(tmp, dpi=100)
        os.link(tmp, target)  # never over a file that appeared meanwhile
    except FileExistsError:
        raise OutputError(
            f"{target.name} exists: not replacing it", location=Location(file=str(path))
        ) from None
    except OSError as exc:
        raise os_error(exc, target) from exc
    finally:
        plt.close(fig)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return target


def composition_figure(manifest: Manifest | dict[str, Any], plt):
    """One row of panels per split (train, eval): rows per cluster, per format and per task."""
    m = Manifest.of(manifest)
    splits = [s for s in ("train", "eval") if s in m.splits and m.splits[s].rows]
    keys = ("cluster", "format", "task")
    bars = [max(len(m.counts[s].get(k, {})) for k in keys) for s in splits]
    heights = [0.22 * n + 1.2 for n in bars]  # a bar's height is the same in every panel
    fig, axes = plt.subplots(
        len(splits),
        3,
        figsize=(18, sum(heights) + 0.6),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for row, split in zip(axes, splits, strict=True):
        total = m.splits[split].rows
        for ax, key in zip(row, keys, strict=True):
            items = sorted(m.counts[split].get(key, {}).items(), key=lambda kv: kv[1])
            drawn = ax.barh([k for k, _ in items], [v for _, v in items], height=0.7)
            ax.bar_label(drawn, labels=[f"{v:,}" for _, v in items], padding=2, fontsize=8)
            ax.set_title(f"{split}: rows per {key} ({total:,} rows)")
            ax.tick_params(axis="y", labelsize=8)
            top = len(items) - 0.4  # bars from the top of the panel, largest first
            ax.set_ylim(top - max(len(items), bars[splits.index(split)]) - 0.2, top)
            ax.margins(x=0.15)  # room for the labels
    fig.suptitle(m.name)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return fig
