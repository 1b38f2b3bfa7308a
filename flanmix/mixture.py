"""The compiled mixture on disk: its columns, its manifest, and reading it back.

This module is the contract between the compiler (writer) and everything that reads a mixture
(inspect, verify, export, train, evaluate). A directory is a mixture only once ``manifest.json``
exists: the writer publishes it last.

Layout::

    OUT/
      train-00000-of-00004.parquet ...   # or .arrow (Arrow IPC stream) when format: arrow
      eval-00000-of-00001.parquet ...
      manifest.json                      # written last: version, spec, seed, shards + sha256, counts
      stats.json                         # kept/dropped per reason, per task and template
      README.md                          # dataset card with `configs:` so datasets.load_dataset(OUT) works
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import Location, MixtureError

MANIFEST = "manifest.json"
STATS = "stats.json"
CARD = "README.md"
LOCO_INDEX = "loco.json"  # a leave-one-cluster-out root: one mixture folder per held-out cluster
FORMAT_VERSION = 1
SPLITS = ("train", "eval")

#: Columns of every shard, train and eval alike.
SCHEMA = pa.schema(
    [
        pa.field("inputs", pa.string(), nullable=False),
        pa.field("targets", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("cluster", pa.string(), nullable=False),
        pa.field("template_id", pa.string(), nullable=False),  # full id: task.template
        pa.field("inverted", pa.bool_(), nullable=False),
        pa.field(
            "format", pa.string(), nullable=False
        ),  # zs_opt | zs_noopt | fs_opt | fs_noopt | cot ...
        pa.field("options", pa.list_(pa.string())),  # answer options as shown (null: generation)
        pa.field("answer_index", pa.int32()),  # index of the target in options (null: generation)
        pa.field(
            "metrics", pa.list_(pa.string())
        ),  # eval: accuracy for options, else generation metrics
        # eval: every gold answer (target first; see flanmix.render.References); train: null
        pa.field("references", pa.list_(pa.string())),
        pa.field("source_split", pa.string(), nullable=False),
        pa.field("source_index", pa.int64(), nullable=False),
        pa.field("example_id", pa.string(), nullable=False),  # stable hash, see flanmix.mix
    ]
)


def shard_name(split: str, index: int, count: int, fmt: str = "parquet") -> str:
    ext = "parquet" if fmt == "parquet" else "arrow"
    return f"{split}-{index:05d}-of-{count:05d}.{ext}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def loco_mixtures(root: str | Path) -> dict[str, Path]:
    """The mixtures of a leave-one-cluster-out root, {held-out cluster: folder}; empty when
    ``root`` is not one (its ``loco.json`` index is written last, like a manifest)."""
    root = Path(root)
    index = root / LOCO_INDEX
    if not index.is_file():
        return {}
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        return {c: root / info["path"] for c, info in data["mixtures"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MixtureError(
            f"unreadable leave-one-cluster-out index: {exc}", location=Location(file=str(index))
        ) from exc


@dataclass
class Mixture:
    """A published mixture directory, opened through its manifest."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Mixture:
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise MixtureError(
                f"no such mixture directory: {path}", location=Location(file=str(path))
            )
        if not mpath.exists() and (path / LOCO_INDEX).is_file():
            names = list(loco_mixtures(path))
            shown = ", ".join(str(path / c) for c in names[:3]) + (
                ", ..." if len(names) > 3 else ""
            )
            raise MixtureError(
                f"a leave-one-cluster-out root holding {len(names)} mixtures, not one mixture",
                location=Location(file=str(path)),
                hint=f"give one of them ({shown}); inspect and verify also take the root",
            )
        if not mpath.exists():
            raise MixtureError(
                "not a mixture: manifest.json is missing (an interrupted or failed compile leaves no manifest)",
                location=Location(file=str(path)),
                hint="run 'flanmix compile' again; it replaces the incomplete directory",
            )
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise MixtureError(
                f"unreadable manifest: {exc}", location=Location(file=str(mpath))
            ) from exc
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise MixtureError(
                f"mixture format version {version!r} is not supported (expected {FORMAT_VERSION})",
                location=Location(file=str(mpath)),
                hint="recompile the mixture with this version of flanmix",
            )
        return cls(path=path, manifest=manifest)

    @property
    def file_format(self) -> str:
        return self.manifest.get("file_format", "parquet")

    def shards(self, split: str) -> list[dict[str, Any]]:
        """Manifest entries ``{"file", "rows", "sha256", "bytes"}`` of a split (empty if absent)."""
        return list(self.manifest.get("splits", {}).get(split, {}).get("shards", []))

    def files(self, split: str) -> list[Path]:
        return [self.path / s["file"] for s in self.shards(split)]

    def num_rows(self, split: str) -> int:
        return sum(s["rows"] for s in self.shards(split))

    def iter_batches(
        self, split: str, columns: list[str] | None = None, batch_size: int = 8192
    ) -> Iterator[pa.RecordBatch]:
        """Stream a split's record batches shard by shard (constant memory)."""
        for path in self.files(split):
            if self.file_format == "parquet":
                import pyarrow.parquet as pq

                yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)
            else:
                with pa.memory_map(str(path)) as source:
                    reader = pa.ipc.open_stream(source)
                    for batch in reader:
                        yield batch.select(columns) if columns else batch

    def iter_rows(self, split: str, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        for batch in self.iter_batches(split, columns):
            yield from batch.to_pylist()

    def dataset(self, split: str):
        """The split as a Hugging Face ``datasets.Dataset`` (memory-mapped Arrow)."""
        import datasets

        files = [str(p) for p in self.files(split)]
        if not files:
            raise MixtureError(
                f"mixture has no {split!r} split", location=Location(file=str(self.path))
            )
        builder = "parquet" if self.file_format == "parquet" else "arrow"
        return datasets.load_dataset(builder, data_files={split: files}, split=split)

    def verify(self) -> list[str]:
        """Problems found by re-hashing every shard and checking the folder against the manifest
        (empty when the mixture is intact); see :mod:`flanmix.verify`."""
        from .verify import mixture_problems

        return mixture_problems(self)


# ----------------------------------------------------------------------------- publishing


def tmp_dir_for(out: Path) -> Path:
    """The temporary folder a writer of ``out`` fills before :func:`publish_dir` renames it."""
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove temporary folders of writers of ``out`` whose process is gone (and put back an
    ``out`` a killed :func:`publish_dir` had moved aside)."""
    removed = []
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in out.parent.glob(f".{out.name}.old-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            if not out.exists():  # killed between the two renames: put the old mixture back
                p.rename(out)
            else:
                shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def publish_dir(tmp: Path, out: Path) -> None:
    """Move the finished directory into place; an existing OUT is replaced only after success."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
