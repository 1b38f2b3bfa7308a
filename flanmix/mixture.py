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

import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

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
        pa.field("example_id", pa.string(), nullable=False),  # stable hash, see flanmix.rows
    ]
)


# ----------------------------------------------------------------------------- the manifest


class _Entry(BaseModel):
    # unknown keys are kept (a newer flanmix may add some); missing or mistyped ones are errors
    model_config = ConfigDict(extra="allow")

    @classmethod
    def of(cls, data: Any) -> Self:
        """``data`` as this model: itself if it is one already, else validated (a dict as
        :func:`flanmix.compile.compile_mixture` returns it)."""
        return data if isinstance(data, cls) else cls.model_validate(data)


class ShardInfo(_Entry):
    """One shard file of a split: a plain file name in the mixture folder, its rows and sha256."""

    file: str
    rows: StrictInt = Field(ge=0)
    sha256: str
    bytes: StrictInt | None = None


class SplitInfo(_Entry):
    rows: StrictInt = Field(ge=0)
    shards: list[ShardInfo]


class TaskInfo(_Entry):
    """A task's part in one split: where its rows come from and how many it gave."""

    task: str
    cluster: str
    role: Literal["train", "eval"]
    source: str
    source_rows: int | None = None
    selected_rows: int
    planned: int
    rows: int
    shortfall: int | None = None  # train: planned rows lost to skips that no redraw replaced


class HoldoutInfo(_Entry):
    clusters: list[str]
    tasks: list[str]
    related: dict[str, str] = Field(default_factory=dict)
    removed_for_overlap: dict[str, str] = Field(default_factory=dict)
    overlap_allowed: list[str] = Field(default_factory=list)
    on_overlap: str | None = None


class Manifest(_Entry):
    """``manifest.json``: what a compile wrote, validated by every reader (:meth:`Mixture.open`).

    The writer (:mod:`flanmix.compile`) checks its dict against this model and writes the dict
    itself (``json.dumps(indent=2)``), so the file's bytes do not depend on pydantic.
    """

    format_version: int
    flanmix_version: str
    name: str
    file_format: Literal["parquet", "arrow"] = "parquet"
    seed: int
    offline: bool = False
    uses_samples: bool = False
    spec_file: str | None = None
    spec: dict[str, Any]
    #: compiled mixtures always have one; a hand-written mixture may train and evaluate one task
    holdout: HoldoutInfo | None = None
    missing_tasks: list[str] = Field(default_factory=list)
    skipped_tasks: dict[str, str] = Field(default_factory=dict)
    tasks: dict[str, TaskInfo]
    splits: dict[Literal["train", "eval"], SplitInfo]
    #: split -> cluster | task | template | format -> name -> rows
    counts: dict[str, dict[str, dict[str, int]]]
    dropped: dict[str, dict[str, int]]  # split -> reason -> examples
    redrawn: dict[str, dict[str, int]] = Field(default_factory=dict)
    few_shot_fallback: dict[str, dict[str, int]] = Field(default_factory=dict)
    sampling_version: int | None = None
    python: str | None = None
    pyarrow: str | None = None


class LocoEntry(_Entry):
    """One held-out cluster's mixture in a leave-one-cluster-out root."""

    path: str  # its folder: a plain name inside the root
    train_rows: StrictInt = Field(ge=0)
    eval_rows: StrictInt = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _inside_the_root(cls, value: str) -> str:
        if value in ("", ".", "..") or "/" in value or "\\" in value:
            raise ValueError("must be a folder name inside the root")
        return value


class LocoIndex(_Entry):
    """``loco.json``: the index of a leave-one-cluster-out root, {held-out cluster: mixture},
    validated on open (:func:`open_loco`). The writer checks its dict against it and writes the
    dict itself, as for :class:`Manifest`."""

    format_version: int
    kind: Literal["leave_one_cluster_out"]
    name: str
    mixtures: dict[str, LocoEntry] = Field(min_length=1)


def model_errors(model: type[BaseModel], data: Any) -> list[str]:
    """Why ``data`` does not fit ``model``, one line per problem ("splits.train.rows: ...")."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        out = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "missing" if err["type"] == "missing" else err["msg"]
            if err["type"] == "value_error":  # a validator's own words, without pydantic's prefix
                msg = str(err["ctx"]["error"])
            out.append(f"{where}: {msg}")
        return out
    return []


def manifest_errors(data: Any) -> list[str]:
    """Why ``data`` is not a valid manifest, one line per problem ("splits.train.rows: ...")."""
    return model_errors(Manifest, data)


def shard_name(split: str, index: int, count: int, fmt: str = "parquet") -> str:
    ext = "parquet" if fmt == "parquet" else "arrow"
    return f"{split}-{index:05d}-of-{count:05d}.{ext}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (a manifest or a LOCO index); anything else (unreadable, not
    UTF-8, not JSON, nested too deep, or valid JSON that is not an object) is one located line."""
    where = Location(file=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MixtureError(
            f"unreadable {what}: {exc.msg} (column {exc.colno})",
            location=where.with_(line=exc.lineno),
        ) from exc
    except RecursionError as exc:
        raise MixtureError(f"unreadable {what}: JSON nested too deep", location=where) from exc
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, an integer too long
        raise MixtureError(f"unreadable {what}: {exc}", location=where) from exc
    if not isinstance(data, dict):
        raise MixtureError(
            f"{path.name} is not a JSON object (it holds {_json_kind(data)})",
            location=where,
            hint="recompile the mixture" if what == "manifest" else "recompile the mixtures",
        )
    return data


def _json_kind(data: Any) -> str:
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "a boolean"
    if isinstance(data, list):
        return "an array"
    if isinstance(data, str):
        return "a string"
    return "a number"


def open_loco(root: str | Path) -> LocoIndex | None:
    """The :class:`LocoIndex` of a leave-one-cluster-out root, or None when ``root`` is not one
    (its ``loco.json`` is written last, like a manifest). A broken index is one located line."""
    index = Path(root) / LOCO_INDEX
    if not index.is_file():
        return None
    where = Location(file=str(index))
    data = read_json_object(index, "leave-one-cluster-out index")
    version = data.get("format_version")
    if isinstance(version, int) and version != FORMAT_VERSION:
        raise MixtureError(
            f"leave-one-cluster-out index format version {version!r} is not supported "
            f"(expected {FORMAT_VERSION})",
            location=where,
            hint="recompile the mixtures with this version of flanmix",
        )
    errors = model_errors(LocoIndex, data)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise MixtureError(
            f"invalid leave-one-cluster-out index: {errors[0]}{more}",
            location=where,
            hint="recompile the leave-one-cluster-out spec",
        )
    return LocoIndex.model_validate(data)


def loco_mixtures(root: str | Path) -> dict[str, Path]:
    """The mixtures of a leave-one-cluster-out root, {held-out cluster: folder}; empty when
    ``root`` is not one."""
    index = open_loco(root)
    if index is None:
        return {}
    return {cluster: Path(root) / entry.path for cluster, entry in index.mixtures.items()}


@dataclass
class Mixture:
    """A published mixture directory, opened through its manifest."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, *, validate: bool = True) -> Mixture:
        """Open a published mixture; its manifest is checked against :class:`Manifest` (a missing
        or mistyped key is a one-line error naming it) unless ``validate`` is false (``flanmix
        verify``, which lists every problem instead)."""
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
        manifest = read_json_object(mpath, "manifest")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise MixtureError(
                f"mixture format version {version!r} is not supported (expected {FORMAT_VERSION})",
                location=Location(file=str(mpath)),
                hint="recompile the mixture with this version of flanmix",
            )
        if validate:
            errors = manifest_errors(manifest)
            if errors:
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise MixtureError(
                    f"manifest.json is incomplete: {errors[0]}{more}",
                    location=Location(file=str(mpath)),
                    hint="recompile the mixture; 'flanmix verify' lists what is wrong",
                )
        return cls(path=path, manifest=manifest)

    @functools.cached_property
    def info(self) -> Manifest:
        """The manifest as a typed :class:`Manifest` (validated when the mixture was opened)."""
        return Manifest.model_validate(self.manifest)

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
        for shard in self.shards(split):
            yield from self.iter_shard(shard, columns, batch_size)

    def iter_shard(
        self, shard: dict[str, Any], columns: list[str] | None = None, batch_size: int = 8192
    ) -> Iterator[pa.RecordBatch]:
        """Stream the record batches of one shard (an entry of :meth:`shards`). A shard that
        cannot be read (corrupt, truncated: a mixture opened without verifying) is a
        :class:`MixtureError` naming it, not an error of whatever the caller writes."""
        path = self.path / shard["file"]
        try:
            if self.file_format == "parquet":
                import pyarrow.parquet as pq

                yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)
            else:
                with pa.memory_map(str(path)) as source:
                    reader = pa.ipc.open_stream(source)
                    for batch in reader:
                        yield batch.select(columns) if columns else batch
        except (OSError, pa.ArrowException) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise MixtureError(
                f"cannot read shard: {first}",
                location=Location(file=str(path)),
                hint="check the mixture with 'flanmix verify'; compile it again if it is damaged",
            ) from None

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
