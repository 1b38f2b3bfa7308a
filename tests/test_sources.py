"""Sources: the real `datasets.load_dataset` hub code path, on a dataset repository we make."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from flanmix.catalog import load_catalog
from flanmix.compile import compile_mixture
from flanmix.mixture import Mixture

from .test_mix import FIXTURE, make_spec


def _hub_repo(root, n_train=400, n_test=60):
    """A folder laid out like a hub dataset repository: data/<split>-00000-of-00001.parquet."""
    data = root / "data"
    data.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        table = pa.table(
            {"text": [f"{split} review {i}: {'great' if i % 2 else 'dull'}." for i in range(n)],
             "label": [i % 2 for i in range(n)]}
        )  # fmt: skip
        pq.write_table(table, data / f"{split}-00000-of-00001.parquet")
    return root


def test_hub_source_goes_through_load_dataset(tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(FIXTURE, lib)
    repo = _hub_repo(tmp_path / "repo")
    task_file = lib / "task_templates" / "sentiment" / "senti.yaml"
    data = yaml.safe_load(task_file.read_text())
    data["source"]["hf"] = {"path": str(repo)}  # load_dataset(path) resolves it like a hub repo
    task_file.write_text(yaml.safe_dump(data, sort_keys=False))
    catalog = load_catalog(lib)

    spec = make_spec(clusters=[], tasks=["senti"], holdout={}, cap=1000, total_rows=None)
    manifest = compile_mixture(
        spec, tmp_path / "out", catalog=catalog, workers=1, offline=False, base_dir=tmp_path
    )
    source = manifest["tasks"]["train:senti"]["source"]
    assert source.startswith(f"hub:{repo}@train"), source
    assert manifest["uses_samples"] is False
    columns = ["inputs", "targets", "source_index"]
    rows = list(Mixture.open(tmp_path / "out").iter_rows("train", columns))
    assert len(rows) == 400
    # every row was rendered from the repository's own row (in the input, or the target of a
    # turned-around "write a review" template)
    bad = [
        r for r in rows if f"train review {r['source_index']}:" not in r["inputs"] + r["targets"]
    ]
    assert bad == [], bad[:3]
