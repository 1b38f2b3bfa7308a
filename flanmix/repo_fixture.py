"""Repository-shaped folders made from task files: a stand-in hub for offline checks and tests.

:func:`write_fixture_repo` writes a task's hub repository as its task file declares it (revision
layout, config, splits, features), filled with the task's samples, under a hub root that
:func:`flanmix.sources_check.local_repo` maps repository ids to. ``flanmix sources check --hub-root``
and ``FLANMIX_HUB_ROOT=... flanmix compile`` then run offline on exactly the code path of the hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .schema import Task
from .sources import base_split
from .sources_check import local_repo, local_source_files


def write_fixture_repo(task: Task, root: Path) -> Path | None:
    """Write ``task``'s hub repository, as the task file declares it, under hub root ``root``.

    The rows are the task's samples (every declared split gets them all), typed by the declared
    fields (mapped back through ``source.rename``) and stored as Parquet with the HF features in the
    schema metadata, as the hub's converter writes them. The layout follows the revision:
    ``refs/convert/parquet`` is ``<data_dir or config>/<split>/0000.parquet`` with no card; other
    revisions get ``<data_dir>/<split>-00000-of-00001.parquet``, or without a data_dir
    ``<config>/<split>-00000-of-00001.parquet`` and a card whose ``configs:`` and ``dataset_info``
    name them. Returns the folder (None for tasks with local files).
    """
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    hf = task.source.hf
    if hf is None:
        return None
    folder = local_repo(hf, root)
    folder.mkdir(parents=True, exist_ok=True)
    back = {new: old for old, new in task.source.rename.items()}
    features = datasets.Features(
        {back.get(name, name): spec.to_feature() for name, spec in task.fields.items()}
    )
    rows = [features.encode_example({k: s.get(k) for k in features}) for s in task.samples]
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    # a sliced split (``train[:-50]``) reads its whole base split's files
    splits = [base_split(s) for s in (task.source.splits.train, task.source.splits.eval) if s]
    config = hf.name or "default"
    if hf.revision == "refs/convert/parquet":
        for split in dict.fromkeys(splits):
            path = folder / (hf.data_dir or config) / split / "0000.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        return folder
    base = folder / (hf.data_dir or config)
    base.mkdir(parents=True, exist_ok=True)
    for split in dict.fromkeys(splits):
        pq.write_table(table, base / f"{split}-00000-of-00001.parquet")
    if not hf.data_dir:  # the card names every config; tasks sharing a repository add theirs
        readme = folder / "README.md"
        card: dict[str, Any] = {"configs": [], "dataset_info": []}
        if readme.is_file():
            card = yaml.safe_load(readme.read_text(encoding="utf-8").split("---\n")[1])
        entry = next((c for c in card["configs"] if c["config_name"] == config), None)
        if entry is None:
            entry = {"config_name": config, "data_files": []}
            card["configs"].append(entry)
        info = next((i for i in card["dataset_info"] if i["config_name"] == config), None)
        if info is None:
            info = {"config_name": config, "features": features._to_yaml_list(), "splits": []}
            card["dataset_info"].append(info)
        for split in dict.fromkeys(splits):
            if all(d["split"] != split for d in entry["data_files"]):
                entry["data_files"].append({"split": split, "path": f"{config}/{split}-*.parquet"})
                info["splits"].append(
                    {"name": split, "num_bytes": 0, "num_examples": table.num_rows}
                )
        text = "---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n\n# " + hf.path + "\n"
        readme.write_text(text, encoding="utf-8")
    return folder


def write_fixture_local(task: Task, task_dir: Path) -> list[Path]:
    """Write a local-source task's files (``source.local.files``, relative to ``task_dir``, the
    folder of its task file) from its samples; for tests on a copy of a library."""
    import datasets
    import pyarrow.parquet as pq

    local = task.source.local
    if local is None:
        return []
    back = {new: old for old, new in task.source.rename.items()}
    features = datasets.Features(
        {back.get(name, name): spec.to_feature() for name, spec in task.fields.items()}
    )
    rows = [features.encode_example({k: s.get(k) for k in features}) for s in task.samples]
    written = []
    for paths in local_source_files(task, task_dir).values():
        path = paths[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        ds = datasets.Dataset.from_list(rows, features=features)
        if local.format == "parquet":
            pq.write_table(ds.data.table, path)
        elif local.format == "json":
            ds.to_json(str(path), lines=True)
        else:
            ds.to_csv(str(path), index=False)
        written.append(path)
    return written


__all__ = ["write_fixture_local", "write_fixture_repo"]
