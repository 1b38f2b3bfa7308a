"""A small mixture written directly in the on-disk contract (flanmix.mixture), for train/evaluate tests.

Used where a test needs a mixture with known rows and no compile step: options rows (sentiment,
two templates) and generation rows (copying a word), split into train and eval.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flanmix.mixture import FORMAT_VERSION, MANIFEST, SCHEMA, sha256_file, shard_name

POSITIVE = [
    "I loved this film, it was wonderful.",
    "An absolutely fantastic and delightful experience.",
    "The food was excellent and the staff were lovely.",
    "What a great book, I enjoyed every page.",
    "Brilliant acting and a beautiful story.",
    "This is the best purchase I have made all year.",
    "The concert was amazing and the crowd was happy.",
    "A charming, funny and heartwarming movie.",
]
NEGATIVE = [
    "I hated this film, it was terrible.",
    "An absolutely awful and boring experience.",
    "The food was disgusting and the staff were rude.",
    "What a bad book, I regret every page.",
    "Horrible acting and a stupid story.",
    "This is the worst purchase I have made all year.",
    "The concert was dreadful and the sound was awful.",
    "A dull, painful and depressing movie.",
]
WORDS = [
    "apple",
    "river",
    "candle",
    "mountain",
    "pencil",
    "garden",
    "window",
    "rocket",
    "violin",
    "castle",
]


def row(inputs, targets, task, cluster, template, options=None, answer=None, metrics=None, index=0):
    return {
        "inputs": inputs,
        "targets": targets,
        "task": task,
        "cluster": cluster,
        "template_id": f"{task}.{template}",
        "inverted": False,
        "format": "zs_opt" if options else "zs_noopt",
        "options": options,
        "answer_index": answer,
        "metrics": metrics or (["accuracy"] if options else ["exact_match", "rouge_l", "bleu"]),
        "references": [targets],
        "source_split": "train",
        "source_index": index,
        "example_id": f"{task}.{template}.{index}",
    }


def sentiment_rows() -> list[dict]:
    rows = []
    sentences = [(s, 0) for s in POSITIVE] + [(s, 1) for s in NEGATIVE]
    for i, (text, label) in enumerate(sentences):
        opts = ["positive", "negative"]
        rows.append(
            row(
                f"Review: {text}\nIs this review positive or negative?\nAnswer with one word.",
                opts[label],
                "sst2",
                "sentiment",
                "posneg",
                opts,
                label,
                index=i,
            )
        )
        opts2 = ["good", "bad"]
        rows.append(
            row(
                f"{text}\nWas the writer's experience good or bad?\nAnswer with one word.",
                opts2[label],
                "sst2",
                "sentiment",
                "goodbad",
                opts2,
                label,
                index=i,
            )
        )
    return rows


def copy_rows() -> list[dict]:
    return [
        row(f"Repeat the word: {w}", w, "copy", "struct_to_text", "repeat", index=i)
        for i, w in enumerate(WORDS)
    ]


def write_mixture(path: Path, splits: dict[str, list[dict]]) -> Path:
    """Write ``splits`` as one parquet shard each plus manifest.json (written last)."""
    path.mkdir(parents=True, exist_ok=True)
    manifest = {  # every key flanmix.mixture.Manifest requires (no holdout: tasks train and eval)
        "format_version": FORMAT_VERSION,
        "flanmix_version": "toy",
        "name": "toy",
        "file_format": "parquet",
        "seed": 0,
        "spec": {"name": "toy"},
        "tasks": {},
        "splits": {},
        "counts": {},
        "dropped": {},
    }
    for split, rows in splits.items():
        name = shard_name(split, 0, 1)
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path / name)
        manifest["splits"][split] = {
            "rows": len(rows),
            "shards": [
                {
                    "file": name,
                    "rows": len(rows),
                    "sha256": sha256_file(path / name),
                    "bytes": (path / name).stat().st_size,
                }
            ],
        }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return path


def toy_mixture(path: Path) -> Path:
    """Train on copying and on sentiment template 'posneg'; evaluate on both sentiment templates and copying."""
    sent, copy = sentiment_rows(), copy_rows()
    train = [r for r in sent if r["template_id"].endswith("posneg")] + copy
    return write_mixture(path, {"train": train, "eval": sent + copy})
