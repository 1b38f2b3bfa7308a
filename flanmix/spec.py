"""Mixture specs: the YAML files under ``mixtures/``, validated by pydantic with ``extra="forbid"``.

A spec says which clusters and tasks train, which are held out for zero-shot evaluation, how many
source examples each task may give (``cap``), how tasks are mixed (examples-proportional with a
maximum rate, or explicit weights, with nested ``submixes``), how templates are used and in which
formats examples are written. See ``mixtures/flan2021.yaml`` for a commented example.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import Location, SpecError
from .schema import ID_PATTERN

#: Plan-time limits: a spec asking for more is refused before anything is planned or allocated.
MAX_TOTAL_ROWS = 1_000_000_000
MAX_SHARDS = 10_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_loose_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """A whole-number setting takes a number: YAML's true/false (``seed: yes``) and quoted
        text (``cap: "10"``) were turned into numbers without a word."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None or not _takes_int(field.annotation):
            return value
        if isinstance(value, (bool, str)):
            kind = "true/false" if isinstance(value, bool) else "text"
            raise ValueError(f"expected a whole number, got {kind} {value!r:.40}")
        return value


def _takes_int(annotation: Any) -> bool:
    """Whether a field's type is ``int`` or ``int | None``."""
    import types
    import typing

    if annotation is int:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args == [int]
    return False


class Mixing(_Model):
    """How a node's rows are divided between its members.

    ``examples_proportional``: each member's rate is its number of examples, at most ``max_rate``
    (FLAN 2021 used 3,000). ``weights``: explicit weights per task or submix name; members not named
    get ``default_weight``.
    """

    method: Literal["examples_proportional", "weights"] = "examples_proportional"
    max_rate: int | None = Field(default=3000, ge=1)
    weights: dict[str, float] = Field(default_factory=dict)
    default_weight: float = 1.0  # a finite number >= 0 (checked below)

    @field_validator("weights")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for name, w in value.items():
            _check_weight(w, f"weight of {name!r}")
        total = sum(value.values())
        if not math.isfinite(total):  # each one finite, but 1e308 + 1e308 is inf
            raise ValueError(
                f"weights sum to more than the largest number a float holds ({sys.float_info.max:.3g});"
                " only their ratios matter: scale them down"
            )
        return value

    @field_validator("default_weight")
    @classmethod
    def _default_positive(cls, value: float) -> float:
        return _check_weight(value, "default_weight")


def _check_weight(w: float | None, what: str) -> float | None:
    """A weight is a finite number >= 0 (``.nan`` and ``.inf`` are floats YAML reads)."""
    if w is not None and not (w >= 0 and math.isfinite(w)):  # NaN compares false with everything
        raise ValueError(f"{what} must be a finite number >= 0, got {w}")
    return w


class Submix(_Model):
    """A mixture inside a mixture (FLAN Collection style), with its own members and mixing."""

    name: str = Field(pattern=ID_PATTERN)
    weight: float | None = Field(
        default=None,
        description="rate in the parent (a finite number >= 0); default: its size",
    )
    clusters: list[str] | Literal["all"] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    exclude_tasks: list[str] = Field(default_factory=list)
    cap: int | None = Field(default=None, ge=1, description="overrides the parent's per-task cap")
    mixing: Mixing | None = None
    submixes: list[Submix] = Field(default_factory=list)

    @field_validator("weight")
    @classmethod
    def _weight_positive(cls, value: float | None) -> float | None:
        return _check_weight(value, "weight")


class Holdout(_Model):
    """Clusters and tasks kept out of training and written to the ``eval`` split."""

    clusters: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    on_overlap: Literal["error", "remove", "allow"] = Field(
        default="remove",
        description="a holdout that splits an overlap group: refuse it, remove the other members from training, or allow it",
    )
    leave_one_cluster_out: bool = Field(
        default=False,
        description="compile one mixture per training cluster, holding that cluster out",
    )


class Templates(_Model):
    """How templates are used: every template per row, one seeded-random one, or round-robin."""

    mode: Literal["all", "random", "round_robin"] = "random"
    inverted: bool | float = Field(
        default=True,
        description="use turned-around templates: true, false, or the fraction of examples",
    )
    cot: bool = Field(
        default=True, description="use chain-of-thought templates where a task has them"
    )
    per_task: int | None = Field(
        default=None,
        ge=1,
        description="train on the first N templates of each task, in file order, after the "
        "inverted/cot settings (FLAN's number-of-templates ablation); eval keeps every template",
    )

    @field_validator("inverted")
    @classmethod
    def _ratio(cls, value: bool | float) -> bool | float:
        if not isinstance(value, bool) and not 0.0 <= value <= 1.0:
            raise ValueError("inverted must be true, false or a fraction between 0 and 1")
        return value


class MaxTokens(_Model):
    """A few-shot length limit in tokens of a named tokenizer (a local folder or file)."""

    tokens: int = Field(ge=16)
    tokenizer: str = Field(
        min_length=1,
        description="a tokenizer folder (transformers.AutoTokenizer) or tokenizer.json, relative to the spec",
    )


class Formats(_Model):
    """Example formats: zero-shot or few-shot, with or without the answer options appended."""

    few_shot: float = Field(
        default=0.0, ge=0, le=1, description="fraction of examples written few-shot"
    )
    k: int = Field(
        default=3, ge=1, le=16, description="exemplars per few-shot example (fewer if too long)"
    )
    max_length: int | MaxTokens = Field(
        default=2048,
        description="maximum input length of a few-shot example: characters (a number) or "
        "{tokens: N, tokenizer: PATH}; exemplars that do not fit are left out, and an example with "
        "none left is written zero-shot (counted as a fallback in the stats and the summary)",
    )
    few_shot_format: Literal["flanmix", "flan2021", "flan_v2"] = Field(
        default="flanmix",
        description="how exemplars are joined: flanmix (x, newline, y, blank line), flan2021 "
        "('0 x X 1 y X ... FLAN'), flan_v2 (blank line between x and y, two between exemplars)",
    )
    options: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="fraction of classification examples with the options appended",
    )
    options_style: Literal["flan", "varied"] = Field(
        default="flan",
        description="flan: 'OPTIONS:' and a dashed list; varied: the frozen list of every header "
        "and marker below (unless options_styles/options_headers name them)",
    )
    options_styles: list[str] | None = Field(
        default=None,
        min_length=1,
        description="option markers drawn per example among these names: flan, dash, "
        "letter_paren, letter_dot, number_dot, number_paren",
    )
    options_headers: list[str] | None = Field(
        default=None,
        min_length=1,
        description="headers drawn per example among these names (markers other than flan): "
        "options_caps, options, choose, pick_from, possible_answers, available_choices, choices, "
        "select, answer_options",
    )
    instructions: Literal["templates", "none", "dataset_name"] = Field(
        default="templates",
        description="train inputs: the templates' instructions; none: the input fields only; "
        "dataset_name: the task id, then the input fields (FLAN's instruction ablations; "
        "turned-around templates are left out; eval rows keep the templates)",
    )

    @field_validator("max_length", mode="before")
    @classmethod
    def _length(cls, value: Any) -> Any:
        """A mapping is {tokens, tokenizer}: say what is wrong with it (not the int alternative)."""
        if not isinstance(value, dict):
            if isinstance(value, int) and not isinstance(value, bool) and value < 64:
                raise ValueError("max_length in characters must be at least 64")
            return value
        try:
            return MaxTokens.model_validate(value)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
            where = ".".join(str(p) for p in err["loc"])
            msg = (
                f"unknown key {where!r}"
                if err["type"] == "extra_forbidden"
                else f"{where}: {err['msg']}"
            )
            raise ValueError(
                f"max_length {msg} (give {{tokens: N, tokenizer: PATH}} or characters)"
            ) from None

    @field_validator("options_styles")
    @classmethod
    def _known_styles(cls, value: list[str] | None) -> list[str] | None:
        from .sampling import MARKERS

        return _known(value, MARKERS, "options style")

    @field_validator("options_headers")
    @classmethod
    def _known_headers(cls, value: list[str] | None) -> list[str] | None:
        from .sampling import HEADERS

        return _known(value, HEADERS, "options header")

    def styles(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(markers, headers) drawn among; markers ('flan',) alone is FLAN's block everywhere."""
        from .sampling import VARIED_HEADERS, VARIED_MARKERS

        varied = self.options_style == "varied"
        markers = self.options_styles or (VARIED_MARKERS if varied else ("flan",))
        headers = self.options_headers or VARIED_HEADERS
        return tuple(markers), tuple(headers)


def _known(value: list[str] | None, known: dict, what: str) -> list[str] | None:
    if value is None:
        return None
    for name in value:
        if name not in known:
            raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    if len(set(value)) != len(value):
        raise ValueError(f"an {what} is listed twice")
    return value


class Eval(_Model):
    """The evaluation split: every template of every held-out task on its evaluation split."""

    enabled: bool = True
    max_rows_per_task: int | None = Field(default=None, ge=1)
    options_in_input: bool = Field(default=True, description="append the FLAN-style OPTIONS block")
    few_shot: int = Field(
        default=0,
        ge=0,
        le=16,
        description="exemplars before every eval row (0: zero-shot), drawn from the held-out "
        "task's training split with the same template, in formats.few_shot_format, fitted to "
        "formats.max_length",
    )


class Output(_Model):
    format: Literal["parquet", "arrow"] = "parquet"
    shards: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SHARDS,
        description="number of train shards (default: from shard_rows and shard_bytes)",
    )
    shard_rows: int = Field(
        default=100_000,
        ge=1,
        description="target rows per shard (each shard takes an equal range of the example ids, "
        "so their sizes vary a little)",
    )
    shard_bytes: int = Field(
        default=128 * 2**20,
        ge=1,
        description="target bytes of text (inputs and targets, UTF-8) per shard: long rows "
        "make more, smaller shards, so that writing or reading one never holds much and "
        "workers write them side by side",
    )


class ExecutorSpec(_Model):
    """Where the compile runs (not what it writes: the shards are the same bytes on every executor,
    so this is left out of the manifest). ``executor: ray`` is short for ``{kind: ray}``."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(
        default=None,
        description="ray: the cluster to join (auto, ray://head:10001); default: a local Ray",
    )
    scratch: str | None = Field(
        default=None,
        description="a folder or fsspec URL (s3://..., gs://...) all workers can reach, for their "
        "pieces and shards; default: the staging folder next to OUT (one machine)",
    )

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value


class MixtureSpec(_Model):
    """A whole mixture spec (the root node is a :class:`Submix` with global settings around it)."""

    name: str = Field(pattern=ID_PATTERN)
    description: str = ""
    seed: int = 0
    catalog: str | None = Field(
        default=None,
        description="folder holding task_templates/ and clusters.yaml, relative to the spec",
    )
    catalogs: dict[str, str] = Field(
        default_factory=dict,
        description="more catalogs, name -> folder relative to the spec (an import's -o folder), "
        "whose task_templates/ and clusters.yaml join the library: their clusters are named "
        "NAME/CLUSTER (select them all with 'NAME/*'); `clusters: all` keeps meaning the library's",
    )

    @field_validator("catalogs")
    @classmethod
    def _catalog_names(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for name in value:
            if not re.fullmatch(ID_PATTERN, name):
                raise ValueError(f"catalog name {name!r} must match {ID_PATTERN}")
        return value

    clusters: list[str] | Literal["all"] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    exclude_tasks: list[str] = Field(default_factory=list)
    missing_tasks: Literal["error", "skip"] = Field(
        default="error",
        description="tasks listed in clusters.yaml without a task file: refuse, or skip (reported)",
    )
    on_source_error: Literal["error", "skip"] = Field(
        default="error",
        description="a task whose source fails the pre-flight (script-only repository, missing "
        "config, split or field, missing local file): refuse the compile, or leave the task out "
        "(recorded in the manifest, inspect and the card)",
    )
    cap: int | None = Field(default=30_000, ge=1, description="per-task cap on source examples")
    total_rows: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOTAL_ROWS,
        description="train rows; default: the sum of capped sizes. Rows are shared out by the mixing "
        "rates, so a task whose rate exceeds its size repeats rows (with other templates)",
    )
    mixing: Mixing = Mixing()
    submixes: list[Submix] = Field(default_factory=list)
    holdout: Holdout = Holdout()
    templates: Templates = Templates()
    formats: Formats = Formats()
    eval: Eval = Eval()
    output: Output = Output()
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec, exclude=True)
    sources: dict[str, str] = Field(
        default_factory=dict,
        description="task -> local data folder (relative to the spec) with <split>.parquet/.jsonl files, overriding the task's source",
    )

    @model_validator(mode="after")
    def _something(self) -> MixtureSpec:
        if not self.clusters and not self.tasks and not self.submixes:
            raise ValueError("an empty mixture: give 'clusters', 'tasks' or 'submixes'")
        return self

    def root(self) -> Submix:
        return Submix(
            name="root",
            clusters=self.clusters,
            tasks=self.tasks,
            exclude_tasks=self.exclude_tasks,
            cap=self.cap,
            mixing=self.mixing,
            submixes=self.submixes,
        )


def load_spec(path: str | Path) -> tuple[MixtureSpec, Path]:
    """Read and validate a spec file. Raises :class:`SpecError` located at file:line."""
    from .catalog import validation_problems
    from .errors import TaskFileError
    from .yamlio import load_yaml

    path = Path(path)
    try:
        data, lines = load_yaml(path)
    except TaskFileError as exc:
        raise SpecError(exc.message, location=exc.location, hint=exc.hint) from exc
    if not isinstance(data, dict):
        raise SpecError(
            "a mixture spec must be a YAML mapping with name, clusters/tasks, holdout ...",
            location=Location(file=str(path), line=1),
            hint="see mixtures/flan2021.yaml",
        )
    try:
        spec = MixtureSpec.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, lines, data)
        loc, msg, hint = problems[0]
        if msg.startswith("unknown key"):
            hint = _spec_hint(exc, data) or hint
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise SpecError(
            msg + more, location=loc.with_(task=None, template=None), hint=hint or None
        ) from exc
    return spec, path.resolve().parent


def _spec_hint(exc: ValidationError, data: Any) -> str | None:
    from .errors import did_you_mean

    err = exc.errors(include_url=False)[0]
    loc = [p for p in err["loc"] if not isinstance(p, int)]
    models = {
        (): MixtureSpec,
        ("mixing",): Mixing,
        ("holdout",): Holdout,
        ("templates",): Templates,
        ("formats",): Formats,
        ("eval",): Eval,
        ("output",): Output,
    }
    parent = tuple(loc[:-1])
    if parent and parent[0] == "submixes":  # submixes nest: what counts is the last key
        model = Mixing if parent[-1] == "mixing" else Submix
    else:
        model = models.get(parent)
    if model is None:
        return None
    allowed = list(model.model_fields)
    close = did_you_mean(str(loc[-1]), allowed)
    return (close + " " if close else "") + f"allowed keys here: {', '.join(allowed)}"


def spec_from_mapping(data: dict[str, Any]) -> MixtureSpec:
    """A spec from a Python mapping (tests, library use). Raises :class:`SpecError`."""
    try:
        return MixtureSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise SpecError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from exc


def check_names(spec: MixtureSpec, catalog: Any, spec_file: str | None = None) -> None:
    """Refuse names a spec would otherwise ignore without a word: a weight for a task or submix
    that is not a member of its node (a misspelt name), a task in ``exclude_tasks`` or
    ``sources`` that the catalog does not have, and a task both in ``tasks`` and in
    ``exclude_tasks`` of one node. Raises :class:`SpecError` located at the spec's line."""
    from .errors import did_you_mean
    from .plan import node_tasks, spec_location

    users: dict[int, tuple[Mixing, str, list[str]]] = {}  # a mixing -> where, its nodes' members

    known = list(catalog.tasks)

    def unknown_task(name: str, field: str) -> SpecError:
        return SpecError(
            f"unknown task {name!r}",
            location=spec_location(spec_file, field),
            hint=did_you_mean(name, known) or "see `flanmix list` for the tasks",
        )

    for name in spec.sources:  # a misspelt name would leave the task on its usual source
        if name not in catalog.tasks:
            raise unknown_task(name, f"sources.{name}")

    def walk(node: Submix, mixing: Mixing, where: str) -> None:
        for i, name in enumerate(node.exclude_tasks):  # a misspelt name would exclude nothing
            if name not in catalog.tasks:
                raise unknown_task(name, f"{where}exclude_tasks[{i}]")
        both = [t for t in node.tasks if t in set(node.exclude_tasks)]
        if both:
            i = node.tasks.index(both[0])
            raise SpecError(
                f"task {both[0]!r} is both in tasks and in exclude_tasks",
                location=spec_location(spec_file, f"{where}tasks[{i}]"),
                hint="keep it in one of the two lists",
            )
        mixing = node.mixing or mixing
        entry = users.setdefault(id(mixing), (mixing, where if node.mixing else "", []))
        entry[2].extend(node_tasks(node, catalog, spec, spec_file, where, []))
        entry[2].extend(s.name for s in node.submixes)
        for i, sub in enumerate(node.submixes):
            walk(sub, mixing, f"{where}submixes[{i}].")

    walk(spec.root(), spec.mixing, "")
    for mixing, where, members in users.values():
        for name in mixing.weights:
            if name not in members:
                raise SpecError(
                    f"weight for {name!r}, which is not a task or submix of this mixture",
                    location=spec_location(spec_file, f"{where}mixing.weights.{name}"),
                    hint=did_you_mean(name, members) or "members: " + ", ".join(members[:20]),
                )
