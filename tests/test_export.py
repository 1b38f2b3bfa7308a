"""Trainer-ready exports: exactly the columns TRL's SFTTrainer expects, parquet or jsonl."""

from __future__ import annotations

import json

import pytest

from flanmix.cli import main
from flanmix.compile import compile_mixture
from flanmix.errors import FlanmixError
from flanmix.export import export_mixture
from flanmix.mixture import Mixture
from tests.test_mix import make_spec


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    from flanmix.catalog import load_catalog
    from tests.test_mix import FIXTURE

    out = tmp_path_factory.mktemp("export") / "mix"
    compile_mixture(
        make_spec(),
        out,
        catalog=load_catalog(FIXTURE),
        workers=1,
        offline=True,
        base_dir=out.parent,
    )
    return out


@pytest.mark.parametrize(
    ("fmt", "columns"),
    [
        ("prompt-completion", ["prompt", "completion", "task", "cluster"]),
        ("messages", ["messages", "task", "cluster"]),
        ("text", ["text", "task", "cluster"]),
    ],
)
def test_export_parquet_columns(tmp_path, mixture, fmt, columns):
    import datasets

    summary = export_mixture(mixture, tmp_path / "dest", fmt=fmt)
    mix = Mixture.open(mixture)
    assert summary["train"]["rows"] == mix.num_rows("train") and summary["eval"][
        "rows"
    ] == mix.num_rows("eval")
    files = sorted(str(p) for p in (tmp_path / "dest").glob("train-*.parquet"))
    data = datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=str(tmp_path / "c")
    )
    assert data.column_names == columns
    first = next(mix.iter_rows("train"))
    row = data[0]
    assert (row.pop("task"), row.pop("cluster")) == (first["task"], first["cluster"])
    if fmt == "prompt-completion":
        assert row == {"prompt": first["inputs"] + "\n", "completion": first["targets"]}
    elif fmt == "messages":
        assert row["messages"] == [
            {"role": "user", "content": first["inputs"]},
            {"role": "assistant", "content": first["targets"]},
        ]
    else:
        assert row["text"] == first["inputs"] + "\n" + first["targets"]


def test_export_jsonl_and_cli(tmp_path, mixture):
    assert (
        main(
            [
                "export",
                str(mixture),
                "--format",
                "messages",
                "--file-format",
                "jsonl",
                "--split",
                "train",
                "-o",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    lines = (tmp_path / "d" / "train.jsonl").read_text().splitlines()
    assert len(lines) == Mixture.open(mixture).num_rows("train")
    assert set(json.loads(lines[0])) == {"messages", "task", "cluster"}
    assert main(["export", str(mixture), "--format", "jsonl", "-o", str(tmp_path / "all")]) == 0
    row = json.loads((tmp_path / "all" / "eval.jsonl").read_text().splitlines()[0])
    assert {"inputs", "targets", "options", "answer_index", "metrics", "example_id"} <= set(row)


def test_export_refuses_existing_dest_and_non_mixture(tmp_path, mixture):
    # an existing empty folder holds nothing to lose: it needs --overwrite, then it is filled
    (tmp_path / "dest").mkdir()
    with pytest.raises(FlanmixError, match="already exists"):
        export_mixture(mixture, tmp_path / "dest")
    export_mixture(mixture, tmp_path / "dest", overwrite=True)
    assert (tmp_path / "dest" / ".flanmix").is_file()
    # a non-empty folder flanmix did not make is refused, --overwrite or not, and left as it was
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(FlanmixError, match="not a folder flanmix made"):
            export_mixture(mixture, tmp_path / "mine", overwrite=overwrite)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(FlanmixError, match="manifest.json is missing"):
        export_mixture(tmp_path / "mine", tmp_path / "other")


def test_export_card_loads_splits_and_separator(tmp_path, mixture):
    import datasets

    dest = tmp_path / "pc"
    export_mixture(mixture, dest, fmt="prompt-completion", separator=" ||| ")
    ds = datasets.load_dataset(str(dest), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "eval"}
    assert all(p.endswith(" ||| ") for p in ds["train"]["prompt"])
