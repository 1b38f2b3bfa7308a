"""Dataset card front matter: what ``datasets.load_dataset(FOLDER)`` reads from ``README.md``.

Every folder flanmix publishes for ``datasets`` (a compiled mixture, a leave-one-cluster-out
root, an export) gets a card whose YAML front matter has

- ``configs:``, naming each split's files (a LOCO root has one config per held-out cluster and no
  ``default``, so ``load_dataset(root)`` asks for a cluster instead of merging every mixture);
- ``dataset_info:`` with the ``features`` (declared, so JSON Lines files whose columns are null in
  one split and lists in another load with one type), the rows per split (``datasets`` checks
  them), and a ``description`` carrying a fingerprint of the data.

Why the fingerprint: ``datasets`` caches a local folder with a card under a hash of the card's
configs and infos only (its file patterns are resolved lazily, so file modification times never
reach the hash). Two compiles into the same folder would otherwise share one cache entry and
``load_dataset`` would keep returning the first compile's rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

if TYPE_CHECKING:
    from .mixture import LocoIndex, Manifest


def fingerprint(parts: Iterable[str]) -> str:
    """A short digest of ``parts`` (shard sha256s, export settings) that names one dataset state."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def mixture_fingerprint(manifest: Manifest | dict[str, Any]) -> str:
    """The fingerprint of a compiled mixture: its shard names and sha256s, in manifest order."""
    from .mixture import Manifest

    m = Manifest.of(manifest)
    return fingerprint(
        f"{split}:{shard.file}:{shard.sha256}"
        for split, info in sorted(m.splits.items())
        for shard in info.shards
    )


_DTYPES = {
    pa.string(): "string",
    pa.large_string(): "large_string",
    pa.bool_(): "bool",
    **{t: str(t) for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())},
    **{t: str(t) for t in (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())},
    pa.float16(): "float16",
    pa.float32(): "float32",
    pa.float64(): "float64",
}


def _yaml_type(t: pa.DataType) -> Any:
    """One type in the ``datasets`` YAML form: a dtype name, ``{"list": ...}``, ``{"struct": [...]}``
    (KeyError for any other type)."""
    if t in _DTYPES:
        return _DTYPES[t]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _yaml_type(t.value_type)
        if isinstance(inner, dict) and "struct" in inner:  # a list of structs: the fields
            inner = inner["struct"]
        return {"list": inner} if pa.types.is_list(t) else {"large_list": inner}
    if pa.types.is_struct(t):
        return {
            "struct": [_yaml_field(t.field(i).name, t.field(i).type) for i in range(t.num_fields)]
        }
    raise KeyError(str(t))


def _yaml_field(name: str, t: pa.DataType) -> dict[str, Any]:
    value = _yaml_type(t)
    if isinstance(value, str):
        return {"name": name, "dtype": value}
    return {"name": name, **value}


def features(schema: pa.Schema) -> list[dict[str, Any]]:
    """``schema`` as the card's ``features`` list (the ``datasets`` YAML form).

    Strings, numbers, booleans, lists and structs (every column flanmix writes) are written here,
    as ``datasets.Features.from_arrow_schema(schema)._to_yaml_list()`` gives them (tested), without
    importing ``datasets`` (about a second of a compile's start); any other type asks ``datasets``.
    """
    try:
        return [_yaml_field(f.name, f.type) for f in schema]
    except KeyError:
        import datasets

        return datasets.Features.from_arrow_schema(schema)._to_yaml_list()


def dataset_info(
    config_name: str,
    schema: pa.Schema,
    rows: dict[str, int],
    description: str,
) -> dict[str, Any]:
    """One config's ``dataset_info`` entry: features, rows per split, description."""
    return {
        "config_name": config_name,
        "description": description,
        "features": features(schema),
        "splits": [{"name": split, "num_examples": int(n)} for split, n in rows.items()],
    }


def front_matter(configs: list[dict[str, Any]], infos: list[dict[str, Any]]) -> str:
    """The ``---``-delimited YAML block that opens a card, ending with a newline."""
    meta: dict[str, Any] = {"configs": configs, "dataset_info": infos}
    body = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{body}---\n"


__all__ = ["dataset_info", "features", "fingerprint", "front_matter", "mixture_fingerprint"]


def mixture_config(
    manifest: Manifest | dict[str, Any], config_name: str = "default", prefix: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``configs`` entry and ``dataset_info`` entry of a compiled mixture.

    ``prefix`` is the mixture's folder relative to the card (a LOCO root's ``nli/``). The data
    files are the manifest's exact shards: a glob would also pick up a file planted later.
    """
    from .mixture import SCHEMA, SPLITS, Manifest

    m = Manifest.of(manifest)
    files, rows = [], {}
    for split in SPLITS:
        info = m.splits.get(split)
        if info is not None and info.shards:
            files.append({"split": split, "path": [prefix + s.file for s in info.shards]})
            rows[split] = info.rows
    description = f"flanmix mixture {m.name} (data fingerprint {mixture_fingerprint(m)})"
    config = {"config_name": config_name, "data_files": files}
    return config, dataset_info(config_name, SCHEMA, rows, description)


def mixture_front_matter(manifest: Manifest | dict[str, Any]) -> str:
    """The front matter of a compiled mixture's card."""
    config, info = mixture_config(manifest)
    return front_matter([config], [info])


def mixture_card(manifest: Manifest | dict[str, Any]) -> str:
    """A compiled mixture's ``README.md``: front matter so ``datasets.load_dataset(OUT)`` finds the
    splits, then the rows per split and cluster, what is held out and every task's source."""
    from .mixture import Manifest

    m = Manifest.of(manifest)
    lines = [mixture_front_matter(m), f"# {m.name}", ""]
    if m.spec.get("description"):
        lines += [m.spec["description"], ""]
    lines += [
        f"Compiled by flanmix {m.flanmix_version} with seed {m.seed}"
        + (" **offline: sources are the task files' samples**" if m.offline else "")
        + ".",
        "",
        "| split | rows | shards |",
        "|---|---:|---:|",
    ]
    for split in ("train", "eval"):
        info = m.splits.get(split)
        rows, shards = (info.rows, len(info.shards)) if info is not None else (0, 0)
        lines.append(f"| {split} | {rows} | {shards} |")
    held = (m.holdout.clusters + m.holdout.tasks) if m.holdout is not None else []
    lines += ["", "Held out: " + (", ".join(held) or "nothing"), ""]
    lines += ["## Rows per cluster (train)", "", "| cluster | rows |", "|---|---:|"]
    for c, n in m.counts["train"]["cluster"].items():
        lines.append(f"| {c} | {n} |")
    lines += ["", "## Sources", "", "| task | role | source |", "|---|---|---|"]
    for task in m.tasks.values():
        lines.append(f"| {task.task} | {task.role} | {task.source} |")
    if m.skipped_tasks:  # left out: no such split, no rows, or a broken source
        lines += ["", "## Skipped", "", "| task | role | why |", "|---|---|---|"]
        for key, why in m.skipped_tasks.items():
            role, task = key.split(":", 1)
            lines.append(f"| {task} | {role} | {why.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def loco_card(
    index: LocoIndex | dict[str, Any], manifests: dict[str, Manifest] | dict[str, dict[str, Any]]
) -> str:
    """The card of a leave-one-cluster-out root: one config per held-out cluster, no ``default``.

    ``load_dataset(root, "nli")`` gives the mixture that holds out nli; ``load_dataset(root)``
    stops and lists the configs instead of merging every mixture (each cluster would then be in
    the training data of eleven others).
    """
    from .mixture import LocoIndex

    loco = LocoIndex.of(index)
    configs, infos = [], []
    for cluster, manifest in manifests.items():
        config, info = mixture_config(manifest, cluster, prefix=f"{loco.mixtures[cluster].path}/")
        configs.append(config)
        infos.append(info)
    first = next(iter(manifests), "CLUSTER")
    lines = [
        front_matter(configs, infos),
        f"# {loco.name} (leave one cluster out)",
        "",
        "One mixture per held-out cluster, each in its own folder. Load one of them with "
        f'`datasets.load_dataset("<this folder>", "{first}")`: the config name is the held-out '
        "cluster. There is no default config, so the mixtures are never merged.",
        "",
        "| held out | folder | train rows | eval rows |",
        "|---|---|---:|---:|",
    ]
    for cluster, entry in loco.mixtures.items():
        lines.append(f"| {cluster} | `{entry.path}/` | {entry.train_rows} | {entry.eval_rows} |")
    return "\n".join(lines) + "\n"
