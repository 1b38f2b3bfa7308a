"""Trainer-ready files from a compiled mixture, streamed batch by batch.

Formats, as TRL's ``SFTTrainer`` expects them:

- ``prompt-completion``: columns ``prompt`` (the input followed by ``separator``, a newline by
  default, so the prompt's last token never merges with the completion's first) and ``completion``;
- ``messages``: column ``messages``, a list of ``{"role", "content"}`` (user, then assistant);
- ``text``: column ``text``, the input and the target joined by a newline;
- ``jsonl``: every column of the mixture, one JSON object per line.

Files are Parquet shards (one per mixture shard) or JSON Lines (``file_format="jsonl"``), with a
``README.md`` whose ``configs:`` front matter maps them to the ``train`` and ``eval`` splits, so
``datasets.load_dataset(DEST)`` works. They are written into a temporary directory that is renamed
to DEST when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import FlanmixError, Location
from .mixture import SCHEMA, SPLITS, Mixture, shard_name
from .publish import claim, os_error, staging, write_marker
from .verify import open_verified

FORMATS = ("prompt-completion", "messages", "text", "jsonl")
TEXT_SEPARATOR = "\n"

MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
#: Kept in every trainer format, for per-task and per-cluster analysis (trainers ignore them).
KEPT = [pa.field("task", pa.string()), pa.field("cluster", pa.string())]
SCHEMAS = {
    "prompt-completion": pa.schema(
        [pa.field("prompt", pa.string()), pa.field("completion", pa.string()), *KEPT]
    ),
    "messages": pa.schema([pa.field("messages", pa.list_(MESSAGE)), *KEPT]),
    "text": pa.schema([pa.field("text", pa.string()), *KEPT]),
}


class ExportError(FlanmixError):
    """An export that cannot be written."""


def convert_batch(batch: pa.RecordBatch, fmt: str, separator: str = TEXT_SEPARATOR) -> pa.Table:
    """One mixture batch in an export format."""
    inputs = batch.column("inputs").to_pylist()
    targets = batch.column("targets").to_pylist()
    kept = {f.name: batch.column(f.name) for f in KEPT}
    if fmt == "prompt-completion":
        prompts = [i + separator for i in inputs]
        return pa.table({"prompt": prompts, "completion": targets, **kept}, schema=SCHEMAS[fmt])
    if fmt == "messages":
        msgs = [
            [{"role": "user", "content": i}, {"role": "assistant", "content": t}]
            for i, t in zip(inputs, targets, strict=True)
        ]
        return pa.table({"messages": msgs, **kept}, schema=SCHEMAS[fmt])
    if fmt == "text":
        return pa.table(
            {"text": [i + separator + t for i, t in zip(inputs, targets, strict=True)], **kept},
            schema=SCHEMAS[fmt],
        )
    return pa.Table.from_batches([batch])


def export_mixture(
    mixture_dir: str | Path,
    dest: str | Path,
    *,
    fmt: str = "prompt-completion",
    file_format: str = "parquet",
    splits: tuple[str, ...] = SPLITS,
    overwrite: bool = False,
    separator: str = TEXT_SEPARATOR,
    verify: bool = True,
) -> dict[str, Any]:
    """Write ``splits`` of a mixture to ``dest`` in ``fmt``; returns {split: {files, rows}}."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}", hint=f"formats: {', '.join(FORMATS)}")
    if file_format not in ("parquet", "jsonl"):
        raise ExportError(f"unknown file format {file_format!r}", hint="parquet or jsonl")
    mixture = open_verified(mixture_dir, verify=verify)
    if Path(os.path.abspath(dest)).resolve().is_relative_to(mixture.path.resolve()):
        raise ExportError(
            "refusing to export into the mixture being read",
            location=Location(file=str(dest)),
            hint="choose a folder outside the mixture",
        )
    try:
        with claim(
            dest, overwrite=overwrite, protect=[mixture.path], what="the export", error=ExportError
        ) as dest:
            return _export(mixture, dest, fmt, file_format, splits, separator)
    except OSError as exc:  # disk full, read-only folder ...: one line, nothing published
        raise os_error(exc, dest) from exc


def _export(mixture, dest, fmt, file_format, splits, separator) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    with staging(dest) as tmp:  # an existing DEST is replaced only at the end, by renames
        for split in splits:
            files = mixture.shards(split)
            if not files:
                continue
            info = summary[split] = {"files": [], "rows": 0}
            if file_format == "jsonl":
                name = f"{split}.jsonl"
                with open(tmp / name, "w", encoding="utf-8") as fh:
                    for batch in mixture.iter_batches(split):
                        for row in convert_batch(batch, fmt, separator).to_pylist():
                            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                            info["rows"] += 1
                info["files"].append(name)
                continue
            import pyarrow.parquet as pq

            for i, shard in enumerate(files):
                name = shard_name(split, i, len(files))
                schema = SCHEMAS.get(fmt) or SCHEMA  # declared up front: an empty shard is valid
                with pq.ParquetWriter(str(tmp / name), schema, compression="zstd") as writer:
                    for batch in mixture.iter_shard(shard):
                        table = convert_batch(batch, fmt, separator)
                        writer.write_table(table if table.schema == schema else table.cast(schema))
                        info["rows"] += table.num_rows
                info["files"].append(name)
        if not summary:
            raise ExportError(
                "the mixture has none of the splits asked for", hint=f"splits: {', '.join(splits)}"
            )
        (tmp / "README.md").write_text(
            _card(mixture, summary, fmt, file_format, separator), encoding="utf-8"
        )
        write_marker(tmp, "export")
    return summary


def _card(
    mixture: Mixture, summary: dict[str, Any], fmt: str, file_format: str, separator: str
) -> str:
    """A dataset card: ``configs:`` naming each split's files, and ``dataset_info:`` declaring the
    features (JSON Lines type inference alone would read a column that is null in train and a
    list in eval as two types) and a fingerprint of the data (see :mod:`flanmix.card`)."""
    from . import __version__
    from .card import dataset_info, fingerprint, front_matter, mixture_fingerprint

    configs = [
        {
            "config_name": "default",
            "data_files": [{"split": s, "path": info["files"]} for s, info in summary.items()],
        }
    ]
    m = mixture.info
    print_ = fingerprint([mixture_fingerprint(m), fmt, file_format, separator, __version__])
    info = dataset_info(
        "default",
        SCHEMAS.get(fmt) or SCHEMA,
        {s: i["rows"] for s, i in summary.items()},
        f"flanmix export ({fmt}) of mixture {m.name} (data fingerprint {print_})",
    )
    lines = [front_matter(configs, [info])]
    rows = ", ".join(f"{split} {info['rows']} rows" for split, info in summary.items())
    lines += [
        f"# {m.name} ({fmt})",
        "",
        f"Exported by flanmix {m.flanmix_version} from the mixture at "
        f'`{mixture.path}` ({rows}; {file_format}). Load it with `datasets.load_dataset("<this folder>")`.',
        "",
    ]
    return "\n".join(lines)
