"""Pydantic models of the files people write: task files (with their templates) and clusters.yaml.

Everything is ``extra="forbid"``: a misspelt key is an error, not a silently ignored setting.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

ID_PATTERN = r"^[a-z][a-z0-9_]*$"
_ID_RE = re.compile(ID_PATTERN)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# --------------------------------------------------------------------------- fields


class FieldSpec(_Model):
    """The type of one field of a dataset row, in the dataset's real schema.

    Shorthands accepted in YAML: ``string``, ``int``, ``float``, ``bool``, ``list[string]``,
    ``list[int]`` ...; mappings for the rest::

        label: {type: class_label, names: [entailment, neutral, contradiction]}
        answers: {type: struct, fields: {text: list[string], answer_start: list[int]}}
        choices: {type: list, item: {type: struct, fields: {...}}}
    """

    type: Literal["string", "int", "float", "bool", "class_label", "list", "struct"]
    names: list[str] | None = None
    item: FieldSpec | None = None
    fields: dict[str, FieldSpec] | None = None
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("list[") and text.endswith("]"):
                return {"type": "list", "item": text[5:-1]}
            return {"type": text}
        return value

    @model_validator(mode="after")
    def _check_shape(self) -> FieldSpec:
        if self.type == "class_label":
            if not self.names:
                raise ValueError("class_label needs 'names', the label names in index order")
            if len(set(self.names)) != len(self.names):
                raise ValueError("class_label 'names' has duplicates")
        elif self.names is not None:
            raise ValueError(f"'names' is only for class_label, not {self.type}")
        if self.type == "list" and self.item is None:
            raise ValueError("list needs 'item', the type of its elements")
        if self.type != "list" and self.item is not None:
            raise ValueError(f"'item' is only for list, not {self.type}")
        if self.type == "struct" and not self.fields:
            raise ValueError("struct needs 'fields'")
        if self.type != "struct" and self.fields is not None:
            raise ValueError(f"'fields' is only for struct, not {self.type}")
        return self

    def check(self, value: Any, path: str) -> str | None:
        """Why ``value`` does not fit this type, or None when it does. ``None`` values are allowed."""
        if value is None:
            return None
        t = self.type
        if t == "string":
            ok = isinstance(value, str)
        elif t in ("int", "class_label"):
            ok = isinstance(value, int) and not isinstance(value, bool)
            if ok and t == "class_label" and not (-1 <= value < len(self.names or [])):
                return f"{path}: label {value} is out of range for {len(self.names or [])} names (-1 means unlabeled)"
        elif t == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif t == "bool":
            ok = isinstance(value, bool)
        elif t == "list":
            if not isinstance(value, list):
                return f"{path}: expected a list, got {type(value).__name__}"
            for i, item in enumerate(value):
                problem = self.item.check(item, f"{path}[{i}]")  # type: ignore[union-attr]
                if problem:
                    return problem
            return None
        else:  # struct
            if not isinstance(value, dict):
                return f"{path}: expected a mapping with keys {sorted(self.fields or {})}, got {type(value).__name__}"
            extra = set(value) - set(self.fields or {})
            if extra:
                return f"{path}: unexpected key(s) {sorted(extra)}; declared: {sorted(self.fields or {})}"
            for name, spec in (self.fields or {}).items():
                if name not in value:
                    return f"{path}.{name}: missing"
                problem = spec.check(value[name], f"{path}.{name}")
                if problem:
                    return problem
            return None
        if not ok:
            return f"{path}: expected {t}, got {type(value).__name__} {value!r:.60}"
        return None

    def to_feature(self):
        """The equivalent ``datasets`` feature (imports datasets lazily)."""
        import datasets

        if self.type == "string":
            return datasets.Value("string")
        if self.type == "int":
            return datasets.Value("int64")
        if self.type == "float":
            return datasets.Value("float64")
        if self.type == "bool":
            return datasets.Value("bool")
        if self.type == "class_label":
            return datasets.ClassLabel(names=list(self.names or []))
        if self.type == "list":
            return datasets.Sequence(self.item.to_feature())  # type: ignore[union-attr]
        return {name: spec.to_feature() for name, spec in (self.fields or {}).items()}


# --------------------------------------------------------------------------- sources


class HubSource(_Model):
    """A dataset on the Hugging Face hub, loaded with ``datasets.load_dataset(path, name)``."""

    path: str = Field(description="hub dataset id, e.g. 'nyu-mll/glue'")
    name: str | None = Field(default=None, description="dataset config name, e.g. 'rte'")
    revision: str | None = None
    data_dir: str | None = None


#: Set to 1 (or pass ``--allow-outside-sources``) to let local sources read outside their folder.
ALLOW_OUTSIDE = "FLANMIX_ALLOW_OUTSIDE_SOURCES"


def outside_allowed() -> bool:
    return os.environ.get(ALLOW_OUTSIDE, "") not in ("", "0")


class LocalSource(_Model):
    """Local files loaded with ``datasets.load_dataset(format, data_files=files)``.

    Relative paths are relative to the task file.
    """

    format: Literal["json", "csv", "parquet"]
    files: dict[str, str | list[str]] = Field(description="split name -> file path(s)")

    @field_validator("files")
    @classmethod
    def _inside(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        if outside_allowed():
            return value
        for given in value.values():
            for p in [given] if isinstance(given, str) else given:
                if PurePosixPath(p).is_absolute() or ".." in PurePosixPath(p).parts:
                    raise ValueError(
                        f"local file {p!r} is outside the task's folder; local sources are read "
                        "only from inside it (set FLANMIX_ALLOW_OUTSIDE_SOURCES=1 or pass "
                        "--allow-outside-sources to allow other paths)"
                    )
        return value


class NIv2Source(_Model):
    """A Super-NaturalInstructions task file, streamed (see :mod:`flanmix.niv2`).

    Relative paths are relative to the task file. ``instances`` and ``bytes`` are recorded by the
    import: while the file keeps that size its instances are not counted again.
    """

    file: str = Field(min_length=1, description="the NIv2 task .json file")
    instances: int | None = Field(default=None, ge=0)
    bytes: int | None = Field(default=None, ge=0)


class RowFilter(_Model):
    """Skip rows for which the Jinja expression ``skip_if`` is true; counted under ``reason``."""

    skip_if: str
    reason: str = Field(min_length=1)


class Splits(_Model):
    """Which source split plays which role. ``eval`` is used for held-out evaluation."""

    train: str | None = "train"
    eval: str | None = "validation"

    @model_validator(mode="after")
    def _one(self) -> Splits:
        if not self.train and not self.eval:
            raise ValueError("at least one of 'train' and 'eval' must name a split")
        return self


class Source(_Model):
    """Where a task's rows come from: exactly one of ``hf``, ``local`` or ``niv2``."""

    hf: HubSource | None = None
    local: LocalSource | None = None
    niv2: NIv2Source | None = None
    splits: Splits = Splits()
    rename: dict[str, str] = Field(default_factory=dict, description="source column -> field name")
    filters: list[RowFilter] = Field(default_factory=list)
    manual_download: str | None = Field(
        default=None,
        description="set when the dataset cannot be fetched automatically: how to get it",
    )
    note: str | None = Field(
        default=None,
        description="why this source is trusted: the hub commit, PR, mirror or release files it names",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if sum(x is not None for x in (self.hf, self.local, self.niv2)) != 1:
            raise ValueError(
                "give exactly one of 'hf' (a hub dataset), 'local' (files) or 'niv2' (an NIv2 "
                "task file)"
            )
        return self


# --------------------------------------------------------------------------- templates and tasks


class Evaluation(_Model):
    """How held-out evaluation scores the task.

    ``options``: templates with answer choices are scored by rank classification (accuracy).
    ``generation``: greedy decoding scored with ``metrics``. Templates without answer choices in an
    options task (turned-around ones) are scored with ``metrics`` too.
    """

    kind: Literal["options", "generation"]
    metrics: list[Literal["exact_match", "f1", "rouge_1", "rouge_2", "rouge_l", "bleu"]] = Field(
        default_factory=lambda: ["rouge_l"],
        description="generation metrics, the first is the primary one (EM and F1 are always "
        "reported too)",
    )
    references: str | None = Field(
        default=None,
        description=(
            "a Jinja expression giving a row's gold answers as a list (e.g. 'answers.text'; "
            "'{{ answers.text }}' is accepted too). Eval rows of non-inverted generation templates "
            "carry the target plus these in their 'references' column, and exact match / F1 take "
            "the best over them. Default: the target alone."
        ),
    )

    @field_validator("references")
    @classmethod
    def _references(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if text.startswith("{{") and text.endswith("}}"):
            text = text[2:-2].strip()
        if not text:
            raise ValueError("references expression is empty")
        return text


class Template(_Model):
    """One instruction template: Jinja for the input and the target, optional answer choices."""

    id: str = Field(
        pattern=ID_PATTERN, description="unique within the task; full id is task.template"
    )
    input: str = Field(min_length=1)
    target: str = Field(min_length=1)
    answer_choices: list[str] | str | None = Field(
        default=None,
        description="a list of choices (each may use Jinja), or one Jinja expression giving a list per row",
    )
    inverted: bool = Field(
        default=False, description="turned around: e.g. given the answer, write the question"
    )
    choices_in_input: bool = Field(
        default=False,
        description="the input already lists the options; the compiler adds no OPTIONS block",
    )
    few_shot: bool = Field(default=True, description="may be used in few-shot format")
    cot: bool = Field(
        default=False,
        description="a chain-of-thought template (target holds reasoning then answer)",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("answer_choices")
    @classmethod
    def _choices(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, list):
            if len(value) < 2:
                raise ValueError("answer_choices needs at least two choices")
            if len(set(value)) != len(value):
                raise ValueError("answer_choices has duplicates")
        elif isinstance(value, str) and not value.strip():
            raise ValueError("answer_choices expression is empty")
        return value


class Task(_Model):
    """One task: a dataset (in its real schema), its templates and sample rows written by us."""

    id: str = Field(pattern=ID_PATTERN)
    cluster: str = Field(pattern=ID_PATTERN)
    description: str = Field(min_length=1)
    source: Source
    fields: dict[str, FieldSpec] = Field(
        min_length=1, description="the row's fields after 'rename'"
    )
    evaluation: Evaluation
    inverted_unavailable: str | None = Field(
        default=None,
        description="why this task cannot have turned-around templates (silences the lint)",
    )
    samples: list[dict[str, Any]] = Field(
        min_length=1, description="rows in the source schema, for lint/preview/tests"
    )
    templates: list[Template] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("templates")
    @classmethod
    def _unique_ids(cls, value: list[Template]) -> list[Template]:
        """Template ids are unique within a task: they key example ids, stats and evaluation."""
        first: dict[str, int] = {}
        for i, t in enumerate(value):
            if t.id in first:
                raise ValidationError.from_exception_data(
                    "Task",
                    [
                        InitErrorDetails(
                            type=PydanticCustomError(
                                "duplicate_template_id",
                                f"template id {t.id!r} is used twice (first by templates[{first[t.id]}])",
                            ),
                            loc=(i, "id"),
                            input=t.id,
                        )
                    ],
                )
            first[t.id] = i
        return value

    def template(self, template_id: str) -> Template:
        for template in self.templates:
            if template.id == template_id:
                return template
        raise KeyError(template_id)

    def rename_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A source row with ``source.rename`` applied."""
        if not self.source.rename:
            return row
        return {self.source.rename.get(k, k): v for k, v in row.items()}


# --------------------------------------------------------------------------- clusters


class Cluster(_Model):
    description: str = ""
    tasks: list[str] = Field(default_factory=list)
    in_all: bool = Field(
        default=True,
        description="a spec's `clusters: all` includes this cluster; false for a cluster only "
        "named explicitly (the FLAN Collection's chain-of-thought tasks, kept out of FLAN 2021)",
    )


class OverlapGroup(_Model):
    """Clusters/tasks that must not be split between training and held-out evaluation."""

    name: str = Field(pattern=ID_PATTERN)
    clusters: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    reason: str = ""

    @model_validator(mode="after")
    def _non_empty(self) -> OverlapGroup:
        if len(self.clusters) + len(self.tasks) < 2:
            raise ValueError("an overlap group needs at least two members (clusters and/or tasks)")
        return self


class RelatedGroup(_Model):
    """Variants of one dataset (FLAN collapses them into one task when it splits): a holdout of any
    member holds out all of them, so no variant trains while another is evaluated."""

    name: str = Field(pattern=ID_PATTERN)
    tasks: list[str] = Field(min_length=2)
    reason: str = ""


class ClustersFile(_Model):
    clusters: dict[str, Cluster]
    overlap_groups: list[OverlapGroup] = Field(
        default_factory=list,
        description="clusters (or tasks) that a cluster holdout keeps out of training together",
    )
    related: list[RelatedGroup] = Field(default_factory=list)
    built_from: dict[str, list[str]] = Field(
        default_factory=dict,
        description="task -> tasks whose text it is built from: it never trains while one of "
        "them is held out",
    )

    @field_validator("clusters")
    @classmethod
    def _ids(cls, value: dict[str, Cluster]) -> dict[str, Cluster]:
        for name in value:
            if not _ID_RE.match(name):
                raise ValueError(f"cluster name {name!r} must match {ID_PATTERN}")
        return value
