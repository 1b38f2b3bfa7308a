"""Checking task sources without downloading rows: ``flanmix sources check`` and the compile pre-flight.

For each task the probe asks what ``datasets.load_dataset`` would do, from metadata only:

1. the repository and revision exist (``HfApi.list_repo_tree`` at the revision, top level only);
2. there is no loading script ``<name>.py`` at that revision (``datasets>=4`` refuses such repos with
   "Dataset scripts are no longer supported");
3. ``datasets.load_dataset_builder`` resolves the config (``source.hf.name``, ``data_dir``) and the
   split names from the repository's card and file layout, exactly as loading would;
4. the declared ``fields`` (after ``source.rename``) exist in the real features, with the right types
   and class label names in index order. Features come from the card's ``dataset_info`` or, failing
   that, from the first Parquet file's footer (the hub's converter stores the HF features there).

The same probe runs on repository-shaped local folders: with a hub root (``--hub-root DIR`` or
``FLANMIX_HUB_ROOT``) the repository ``owner/name`` is the folder ``DIR/owner/name``, and at a
revision ``DIR/owner/name@<revision, URL-quoted>`` (``ybisk/piqa@refs%2Fconvert%2Fparquet``).
:mod:`flanmix.repo_fixture` writes such folders from a task's declared features and samples.

:func:`preflight` runs the probe over the sources a compile will read, before anything is rendered,
so every broken source is reported at once (see :func:`flanmix.plan.plan_mixture`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from .errors import Location, PreflightError, SourceError, did_you_mean
from .schema import FieldSpec, HubSource, Task
from .sources import base_split

HUB_ROOT_ENV = "FLANMIX_HUB_ROOT"
ROLES = ("train", "eval")
OFFLINE = "the hub cannot be reached: "


# ----------------------------------------------------------------------------- results


@dataclass
class Problem:
    """One thing wrong with a task's source, located in the task file."""

    kind: str  # script | repository | revision | gated | config | data | split | field | type | labels | local | offline | error
    message: str
    hint: str | None
    location: Location
    role: str | None = None  # the split role it concerns; None: the whole source
    severity: str = "error"  # "error" fails the check; "warning" is shown only

    def error(self) -> SourceError:
        return SourceError(f"{self.kind}: {self.message}", location=self.location, hint=self.hint)


@dataclass
class TaskReport:
    """The probe's answer for one task: a row per check and the problems found."""

    task: str
    file: str
    source: str
    checks: list[tuple[str, str, str]] = field(default_factory=list)  # (check, status, detail)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "file": self.file,
            "source": self.source,
            "ok": self.ok,
            "checks": [{"check": c, "status": s, "detail": d} for c, s, d in self.checks],
            "problems": [
                {
                    "kind": p.kind,
                    "severity": p.severity,
                    "role": p.role,
                    "message": p.message,
                    "hint": p.hint,
                    "file": p.location.file,
                    "line": p.location.line,
                    "location": str(p.location),
                }
                for p in self.problems
            ],
        }


class HubProbeState:
    """Shared across one run: once the hub is unreachable, later tasks are not retried."""

    def __init__(self) -> None:
        self.unreachable: str | None = None


# ----------------------------------------------------------------------------- hub root


def hub_root(root: str | Path | None = None) -> Path | None:
    """The folder standing in for the hub: ``root``, else ``$FLANMIX_HUB_ROOT``, else None."""
    given = root if root is not None else os.environ.get(HUB_ROOT_ENV)
    return Path(given).expanduser() if given else None


def local_repo(hf: HubSource, root: Path | None) -> Path | None:
    """The local folder that plays repository ``hf.path`` at ``hf.revision``, if any.

    Under a hub root: ``root/owner/name`` (default revision) or ``root/owner/name@<quoted rev>``.
    Without one, ``hf.path`` itself when it is a folder (``datasets`` loads those the same way).
    """
    if root is not None:
        folder = root / hf.path
        if hf.revision and hf.revision != "main":
            folder = folder.with_name(folder.name + "@" + quote(hf.revision, safe=""))
        return folder
    path = Path(hf.path).expanduser()
    return path if path.is_dir() else None


def describe(task: Task) -> str:
    """The source as people read it: ``hub:owner/name[/config]@revision [data_dir=...]``."""
    if task.source.local is not None:
        return f"local:{task.source.local.format}"
    if task.source.niv2 is not None:
        return f"niv2:{task.source.niv2.file}"
    hf = task.source.hf
    text = f"hub:{hf.path}" + (f"/{hf.name}" if hf.name else "") + f"@{hf.revision or 'main'}"
    return text + (f" data_dir={hf.data_dir}" if hf.data_dir else "")


# ----------------------------------------------------------------------------- the probe


def _network_error(exc: BaseException) -> bool:
    from .sources import network_error

    return network_error(exc)


class _Probe:
    """Checks one task's source; collects checks and problems into a :class:`TaskReport`."""

    def __init__(self, tf, roles: Iterable[str], root: Path | None, state: HubProbeState):
        self.tf = tf
        self.task: Task = tf.task
        self.roles = [r for r in ROLES if r in set(roles) and getattr(self.task.source.splits, r)]
        self.root = root
        self.state = state
        self.report = TaskReport(self.task.id, str(tf.path), describe(self.task))

    def at(self, *keys: Any) -> Location:
        loc = self.tf.location(*keys)
        return loc.with_(file=_rel(loc.file))

    def check(self, name: str, status: str, detail: str) -> None:
        self.report.checks.append((name, status, detail))

    def problem(
        self,
        kind: str,
        message: str,
        hint: str | None,
        keys: tuple,
        role: str | None = None,
        severity: str = "error",
        check: str | None = None,
    ) -> None:
        self.report.problems.append(Problem(kind, message, hint, self.at(*keys), role, severity))
        self.check(check or kind, "warn" if severity == "warning" else "FAIL", message)

    def _with_manual(self, hint: str) -> str:
        from .source_build import build_hint

        extra = [x for x in (build_hint(self.task.id), self.task.source.manual_download) if x]
        return "; ".join([hint, *extra])

    # -- local files (source.local, or a spec's 'sources' folder)

    def local_files(self, files: dict[str, list[Path]], fmt_of, where: tuple) -> None:
        for role in self.roles:
            split = base_split(getattr(self.task.source.splits, role))
            paths = files.get(split)
            if not paths:
                self.problem(
                    "local",
                    f"no file for split {split!r}",
                    f"files for splits: {', '.join(files) or 'none'}",
                    where,
                    role,
                    check=f"split {role}",
                )
                continue
            missing = [_rel(str(p)) for p in paths if not p.is_file()]
            if missing:
                from .source_build import build_hint

                spec_folder = self.report.source.startswith("folder:")
                hint = "; ".join(
                    x
                    for x in (
                        build_hint(self.task.id) or self.task.source.manual_download,
                        # a spec's sources: folder is read even offline
                        f"fix or remove {self.task.id} in the spec's sources: to use its samples"
                        if spec_folder
                        else "`flanmix compile --offline` uses the task's samples instead",
                    )
                    if x
                )
                self.problem(
                    "local",
                    f"file not found: {', '.join(missing)}",
                    hint,
                    where,
                    role,
                    check=f"split {role}",
                )
                continue
            self.check(f"split {role}", "ok", f"{split}: {', '.join(p.name for p in paths)}")
            kind = fmt_of(paths[0])
            if kind == "parquet":
                self.features_from_file(str(paths[0]), "the Parquet schema")
            elif kind in ("json", "csv"):
                self.features_from_loaded(kind, split, paths, where, role)
            else:
                self.check("fields", "skip", f"types not checked ({paths[0].suffix} files)")

    def features_from_loaded(
        self, fmt: str, split: str, paths: list[Path], where: tuple, role: str
    ) -> None:
        """JSON Lines and CSV files carry no schema: load them as compile will (the same
        ``datasets.load_dataset`` call, whose cache compile then reads) and check the types it
        inferred, so a missing column or a wrong type is found here, naming the file."""
        import datasets

        from .sources import load_failure

        names = ", ".join(_rel(str(p)) for p in paths)
        try:
            ds = datasets.load_dataset(
                fmt, data_files={split: [str(p) for p in paths]}, split=split
            )
        except Exception as exc:  # noqa: BLE001 - the file's own problem, said in one line
            self.problem(
                "data",
                f"cannot load {names}: {load_failure(exc)}",
                "fix the file: UTF-8, one JSON object per line"
                if fmt == "json"
                else "fix the file: UTF-8, a header row, then as many cells on every line",
                where,
                role,
                check="fields",
            )
            return
        features = dict(ds.features)
        for name in features:  # a CSV column of empty cells reads as float: say it is empty
            column = ds.data.column(name)
            if len(column) and column.null_count == len(column):
                features[name] = _ArrowKind("null")
        self.compare(features, f"the types read from {names}")

    # -- hub repositories (or folders shaped like them)

    def hub(self) -> None:
        hf = self.task.source.hf
        repo_dir = local_repo(hf, self.root)
        rev = hf.revision or "main"
        at_path = ("source", "hf", "path")
        at_rev = ("source", "hf", "revision") if hf.revision else at_path
        cached_only = False
        if repo_dir is not None:
            if not repo_dir.is_dir():
                self.problem(
                    "repository",
                    f"no folder {repo_dir} for {hf.path}@{rev} under the hub root",
                    "write the repository there (see `flanmix sources fixture`), or unset the hub root",
                    at_rev,
                    check="repository",
                )
                return
            top = sorted(p.name for p in repo_dir.iterdir() if p.is_file())
            self.check("repository", "ok", f"{_rel(str(repo_dir))} ({len(top)} top-level file(s))")
        else:
            if self.state.unreachable:
                return self.offline(self.state.unreachable)
            try:
                top = self.list_top(hf)
            except Exception as exc:  # noqa: BLE001 - classified below
                if not _network_error(exc):
                    return self.hub_error(exc, at_path, at_rev)
                from huggingface_hub import constants

                if not constants.HF_HUB_OFFLINE:  # a real outage: do not retry every task
                    self.state.unreachable = _short(exc)
                    return self.offline(self.state.unreachable)
                cached_only, top = True, []  # HF_HUB_OFFLINE: datasets may still have it cached
            else:
                self.check("repository", "ok", f"{hf.path}@{rev} ({len(top)} top-level file(s))")
        script = hf.path.rstrip("/").split("/")[-1] + ".py"
        if script in top:
            self.problem(
                "script",
                f"{hf.path}@{rev} has a loading script {script}, which datasets>=4 refuses "
                "('Dataset scripts are no longer supported')",
                self._with_manual(
                    "point source.hf at a script-free copy: the hub's Parquet export "
                    "(revision: refs/convert/parquet, data_dir: <config>, no name), a conversion PR "
                    "(revision: refs/pr/N) or a maintained mirror; or a local source built from "
                    "the original release files"
                ),
                at_rev,
                check="script",
            )
            return
        if not cached_only:
            self.check("script", "ok", f"no {script}")
        self.builder(hf, repo_dir, cached_only)

    def list_top(self, hf: HubSource) -> list[str]:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        entries = HfApi().list_repo_tree(hf.path, repo_type="dataset", revision=hf.revision)
        return sorted(e.path for e in entries if isinstance(e, RepoFile))

    def offline(self, why: str) -> None:
        self.problem(
            "offline",
            OFFLINE + why,
            "connect to the hub, or compile with --offline to use the task files' samples",
            ("source", "hf", "path"),
            check="repository",
        )

    def hub_error(self, exc: BaseException, at_path: tuple, at_rev: tuple) -> None:
        from huggingface_hub.errors import (
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        hf = self.task.source.hf
        if isinstance(exc, GatedRepoError) or "gated" in str(exc).lower():
            self.problem(
                "gated",
                f"{hf.path} is gated: {_short(exc)}",
                self._with_manual(
                    f"accept its conditions on https://huggingface.co/datasets/{hf.path} and log in "
                    "(`hf auth login` or HF_TOKEN)"
                ),
                at_path,
                check="repository",
            )
        elif isinstance(exc, RevisionNotFoundError):
            self.problem(
                "revision",
                f"{hf.path} has no revision {hf.revision!r}",
                "check source.hf.revision (a branch, tag, commit, refs/pr/N or refs/convert/parquet)",
                at_rev,
                check="repository",
            )
        elif isinstance(exc, RepositoryNotFoundError):
            self.problem(
                "repository",
                f"no dataset repository {hf.path!r} on the hub (or it is private)",
                "check source.hf.path (owner/name as on huggingface.co/datasets)",
                at_path,
                check="repository",
            )
        else:
            self.problem("error", _short(exc), "see the message", at_path, check="repository")

    def builder(self, hf: HubSource, repo_dir: Path | None, cached_only: bool) -> None:
        import datasets

        path = str(repo_dir) if repo_dir is not None else hf.path
        at_name = ("source", "hf", "name") if hf.name else ("source", "hf", "path")
        try:
            b = datasets.load_dataset_builder(
                path,
                hf.name,
                revision=None if repo_dir is not None else hf.revision,
                data_dir=hf.data_dir,
            )
        except Exception as exc:  # noqa: BLE001 - classified below
            text = str(exc)
            if "Dataset scripts are no longer supported" in text:
                self.problem(
                    "script",
                    text.splitlines()[0],
                    "point source.hf at a script-free revision (refs/convert/parquet, refs/pr/N) or mirror",
                    ("source", "hf", "path"),
                    check="script",
                )
            elif "BuilderConfig" in text and "not found" in text:
                names = _configs_in(text)
                close = did_you_mean(hf.name or "", names) if hf.name else None
                self.problem(
                    "config",
                    f"no config {hf.name!r} in {hf.path}@{hf.revision or 'main'}",
                    (close + " " if close else "")
                    + f"configs: {', '.join(names) or '(none listed)'}"
                    + ("; the Parquet export has one folder per config: use data_dir: <config> and no name"
                       if hf.revision == "refs/convert/parquet" else ""),
                    at_name,
                    check="config",
                )  # fmt: skip
            elif _network_error(exc):
                self.offline(
                    "HF_HUB_OFFLINE is set and the dataset is not in the local cache"
                    if cached_only
                    else _short(exc)
                )
            elif isinstance(exc, FileNotFoundError) and "gated" not in text.lower():
                keys = ("source", "hf", "data_dir") if hf.data_dir else ("source", "hf", "path")
                self.problem(
                    "data",
                    f"no data files found: {_short(exc)}",
                    "check source.hf.data_dir and the revision's file layout",
                    keys,
                    check="config",
                )
            else:
                self.hub_error(exc, ("source", "hf", "path"), ("source", "hf", "path"))
            return
        if cached_only:
            self.check("repository", "ok", f"{hf.path} from the local datasets cache (offline)")
            self.check("script", "skip", "not checked offline")
        self.check("config", "ok", b.config.name)
        available = {str(k): list(v) for k, v in (b.config.data_files or {}).items()}
        if not available and b.info.splits:
            available = {str(k): [] for k in b.info.splits}
        first_file = None
        for role in self.roles:
            split = base_split(getattr(self.task.source.splits, role))
            if split in available:
                n = len(available[split])
                self.check(f"split {role}", "ok", f"{split}" + (f" ({n} file(s))" if n else ""))
                first_file = first_file or (available[split] or [None])[0]
                continue
            close = did_you_mean(split, available)
            extra = ""
            if split in ("dev", "valid", "val") and "validation" in available:
                extra = "; datasets names a dev/valid folder or file 'validation'"
            self.problem(
                "split",
                f"no split {split!r} in {b.config.name}",
                (close + " " if close else "")
                + f"splits: {', '.join(available) or 'none'}"
                + extra,
                ("source", "splits", role),
                role,
                check=f"split {role}",
            )
        if b.info.features is not None:
            self.compare(b.info.features, "the dataset card")
        elif first_file is not None and str(first_file).endswith(".parquet"):
            self.features_from_file(str(first_file), "the Parquet schema")
        else:
            self.check("fields", "skip", "types not checked (no declared features, not Parquet)")

    # -- features

    def features_from_file(self, path: str, what: str) -> None:
        import pyarrow.parquet as pq

        try:
            if path.startswith("hf://"):
                from huggingface_hub import HfFileSystem

                with HfFileSystem().open(path, "rb", block_size=1 << 16) as f:
                    schema = pq.read_schema(f)
            else:
                schema = pq.read_schema(path)
            if b"huggingface" in (schema.metadata or {}):  # datasets' features (class labels)
                import datasets

                features = datasets.Features.from_arrow_schema(schema)
            else:  # plain Arrow types: no need to import datasets (a second per compile)
                features = {f.name: _ArrowKind(_arrow_kind(f.type)) for f in schema}
        except Exception as exc:  # noqa: BLE001
            if _network_error(exc):
                return self.offline(_short(exc))
            self.problem(
                "data", f"cannot read the schema of {path}: {_short(exc)}", None, ("source",)
            )
            return
        self.compare(features, what)

    def compare(self, features, what: str) -> None:
        rename = self.task.source.rename
        real = {rename.get(k, k): _kind(v) for k, v in features.items()}
        before = len(self.report.problems)
        for name, spec in self.task.fields.items():
            keys = ("fields", name)
            if name not in real:
                source_name = next((k for k, v in rename.items() if v == name), name)
                close = did_you_mean(source_name, list(features))
                self.problem(
                    "field",
                    f"declared field {name!r} is not in the real features ({what})",
                    (close + " " if close else "")
                    + f"real columns: {', '.join(features)}; fix 'fields' or map it with source.rename",
                    keys,
                    check="fields",
                )
                continue
            for kind, message, severity in _compare(spec, real[name], name):
                hint = (
                    "write the real label names in index order; templates that index "
                    "answer_choices by the label must follow the same order"
                    if kind == "labels"
                    else "declare the real type in 'fields'"
                )
                self.problem(kind, message, hint, keys, severity=severity, check="fields")
        errors = [p for p in self.report.problems[before:] if p.severity == "error"]
        if not errors:
            self.check("fields", "ok", f"{len(self.task.fields)} declared field(s) match ({what})")


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def _configs_in(text: str) -> list[str]:
    """Config names from datasets' "BuilderConfig 'x' not found. Available: ['a', 'b']"."""
    import ast

    _, _, rest = text.partition("Available:")
    try:
        names = ast.literal_eval(rest.strip().split("\n")[0])
        return [str(n) for n in names]
    except (ValueError, SyntaxError):
        return []


# ----------------------------------------------------------------------------- features vs fields


class _ArrowKind(NamedTuple):
    """The kind of a plain Arrow column (a Parquet file without ``datasets`` features)."""

    kind: Any


def _arrow_kind(t) -> Any:
    """An Arrow type as :func:`_kind` gives the ``datasets`` feature made from it."""
    import pyarrow as pa
    import pyarrow.types as pt

    if pt.is_string(t) or pt.is_large_string(t) or pt.is_string_view(t):
        return "string"
    if pt.is_integer(t):
        return "int"
    if pt.is_floating(t):
        return "float"
    if pt.is_boolean(t):
        return "bool"
    if pt.is_null(t):
        return "null"
    if pt.is_binary(t) or pt.is_large_binary(t) or pt.is_fixed_size_binary(t):
        return "binary"  # bytes: never text (they would render as "b'...'")
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t) or pt.is_list_view(t):
        return ("list", _arrow_kind(t.value_type))
    if pt.is_struct(t):
        return (
            "struct",
            {t.field(i).name: _arrow_kind(t.field(i).type) for i in range(t.num_fields)},
        )
    if pt.is_date32(t) or pt.is_date64(t):
        return ("other", "date32" if pt.is_date32(t) else "date64")
    return ("other", str(t) if not isinstance(t, pa.DictionaryType) else "dictionary")


def _kind(feature) -> Any:
    """A ``datasets`` feature as a small comparable tree: "string", ("class_label", names) ..."""
    if isinstance(feature, _ArrowKind):
        return feature.kind
    import datasets

    if isinstance(feature, dict):
        return ("struct", {k: _kind(v) for k, v in feature.items()})
    if isinstance(feature, datasets.ClassLabel):
        return ("class_label", list(feature.names))
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return ("list", _kind(feature.feature))
    if isinstance(feature, datasets.Translation):
        return ("struct", {lang: "string" for lang in feature.languages})
    if isinstance(feature, datasets.TranslationVariableLanguages):
        return ("struct", {"language": ("list", "string"), "translation": ("list", "string")})
    if isinstance(feature, datasets.Value):
        d = feature.dtype
        if d in ("string", "large_string"):
            return "string"
        if d.startswith(("int", "uint")):
            return "int"
        if d.startswith("float") or d in ("double", "halffloat"):
            return "float"
        if d == "bool":
            return "bool"
        if d == "null":
            return "null"
        if d in ("binary", "large_binary"):
            return "binary"
        return ("other", d)
    return ("other", type(feature).__name__)


def _show(kind: Any) -> str:
    if isinstance(kind, str):
        return kind
    tag, arg = kind
    if tag == "list":
        return f"list[{_show(arg)}]"
    if tag == "struct":
        return "struct{" + ", ".join(f"{k}: {_show(v)}" for k, v in arg.items()) + "}"
    if tag == "class_label":
        return f"class_label{arg}"
    return str(arg)


#: declared scalar type -> the real types that read as it
_FITS = {
    "int": ("int", "class_label"),
    "float": ("float", "int"),
    "string": ("string",),
    "bool": ("bool",),
}


def _compare(spec: FieldSpec, real: Any, path: str) -> list[tuple[str, str, str]]:
    """(kind, message, severity) for each way the declared ``spec`` does not fit ``real``."""
    tag = real if isinstance(real, str) else real[0]
    t = spec.type
    if tag == "null":
        return []  # an all-null column fits any declaration
    if tag == "other":
        return [("type", f"{path}: real type {_show(real)} is not checked", "warning")]
    if t == "class_label":
        if tag == "class_label":
            names = real[1]
            if names == spec.names:
                return []
            if sorted(names) == sorted(spec.names or []):
                msg = f"{path}: label order differs: real {names}, declared {spec.names}"
            else:
                msg = f"{path}: label names differ: real {names}, declared {spec.names}"
            return [("labels", msg, "error")]
        if tag == "int":
            return [
                (
                    "type",
                    f"{path}: real column is a plain int, label names cannot be checked",
                    "warning",
                )
            ]
    elif tag in _FITS.get(t, ()):
        return []
    elif t == "list" and tag == "list":
        return _compare(spec.item, real[1], f"{path}[]")  # type: ignore[arg-type]
    elif t == "struct" and tag == "struct":
        out = []
        for name, sub in (spec.fields or {}).items():
            if name not in real[1]:
                close = did_you_mean(name, real[1])
                out.append(
                    (
                        "field",
                        f"{path}.{name}: not in the real struct (keys: {', '.join(real[1])})"
                        + (f"; {close}" if close else ""),
                        "error",
                    )
                )
            else:
                out += _compare(sub, real[1][name], f"{path}.{name}")
        return out
    return [("type", f"{path}: declared {_show_spec(spec)}, real {_show(real)}", "error")]


def _show_spec(spec: FieldSpec) -> str:
    if spec.type == "list":
        return f"list[{_show_spec(spec.item)}]"  # type: ignore[arg-type]
    if spec.type == "struct":
        return (
            "struct{"
            + ", ".join(f"{k}: {_show_spec(v)}" for k, v in (spec.fields or {}).items())
            + "}"
        )
    return spec.type


# ----------------------------------------------------------------------------- running it


def local_source_files(task: Task, base_dir: Path) -> dict[str, list[Path]]:
    local = task.source.local
    out = {}
    for split, given in local.files.items():
        out[split] = [
            Path(p) if Path(p).is_absolute() else base_dir / p
            for p in ([given] if isinstance(given, str) else given)
        ]
    return out


def _folder_files(task: Task, folder: Path) -> dict[str, list[Path]]:
    """What compile reads from a spec's ``sources`` folder: ``<split>.parquet|.jsonl|.json|.csv``."""
    out = {}
    for split in {base_split(s) for s in (task.source.splits.train, task.source.splits.eval) if s}:
        found = [folder / f"{split}{ext}" for ext in (".parquet", ".jsonl", ".json", ".csv")]
        existing = [p for p in found if p.is_file()]
        out[split] = existing[:1] or [folder / f"{split}.parquet"]
    return out


def check_task(
    tf,
    roles: Iterable[str] = ROLES,
    *,
    root: Path | None = None,
    folder: Path | None = None,
    state: HubProbeState | None = None,
) -> TaskReport:
    """Probe one task's source (``tf`` a :class:`flanmix.catalog.TaskFile`); never raises for the
    source's own problems, which land in the report."""
    probe = _Probe(tf, roles, root, state or HubProbeState())
    task = tf.task
    fmt = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
    if folder is not None:
        probe.report.source = f"folder:{folder}"
        probe.local_files(_folder_files(task, folder), lambda p: fmt.get(p.suffix), ("id",))
    elif task.source.local is not None:
        kind = task.source.local.format
        probe.local_files(
            local_source_files(task, tf.path.parent), lambda p: kind, ("source", "local", "files")
        )
    elif task.source.niv2 is not None:  # an NIv2 task file (flanmix.niv2): is it there?
        given = Path(task.source.niv2.file)
        path = given if given.is_absolute() else tf.path.parent / given
        splits = {base_split(s) for s in (task.source.splits.train, task.source.splits.eval) if s}
        probe.local_files({s: [path] for s in splits}, lambda p: "niv2", ("source", "niv2", "file"))
    else:
        probe.hub()
    return probe.report


def check_tasks(
    items: list[tuple[Any, set[str], Path | None]],
    *,
    root: Path | None = None,
    workers: int = 8,
) -> list[TaskReport]:
    """Probe many tasks: ``items`` are (TaskFile, roles, spec folder or None). Hub probes run in
    threads (they wait on the network); the order of the result follows ``items``."""
    state = HubProbeState()

    def one(item):
        tf, roles, folder = item
        return check_task(tf, roles, root=root, folder=folder, state=state)

    remote = [
        i
        for i, (tf, _, folder) in enumerate(items)
        if folder is None
        and tf.task.source.hf is not None
        and local_repo(tf.task.source.hf, root) is None
    ]
    reports: dict[int, TaskReport] = {}
    if remote:  # the first one alone, so an unreachable hub is found once, not N times at once
        reports[remote[0]] = one(items[remote[0]])
    rest = [i for i in range(len(items)) if i not in reports]
    parallel = [i for i in rest if i in set(remote)]
    if len(parallel) > 1 and not state.unreachable:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, r in zip(parallel, pool.map(one, [items[i] for i in parallel]), strict=True):
                reports[i] = r
    for i in rest:
        if i not in reports:
            reports[i] = one(items[i])
    return [reports[i] for i in range(len(items))]


def preflight(
    uses: dict[str, set[str]],
    catalog,
    *,
    offline: bool,
    folders: dict[str, Path],
    root: Path | None = None,
) -> tuple[list[TaskReport], dict[str, str]]:
    """Check every source a compile will read, before reading any rows.

    ``uses``: task -> roles ("train", "eval") it is read for; ``folders``: the spec's ``sources``.
    Returns the reports with problems and, for tasks whose only problem is an unreachable hub,
    task -> why (they fall back to their samples). With ``offline`` only the spec's folders are
    checked (everything else is replaced by samples).
    """
    items = []
    for t in sorted(uses):
        folder = folders.get(t)
        if offline and folder is None:
            continue
        items.append((catalog.task_file(t), uses[t], folder))
    reports = check_tasks(items, root=hub_root(root))
    failing, unreachable = [], {}
    for r in reports:
        if not r.problems:
            continue
        if r.errors and all(p.kind == "offline" for p in r.errors):
            unreachable[r.task] = r.errors[0].message.removeprefix(OFFLINE)
        elif r.errors:
            failing.append(r)
    return failing, unreachable


def preflight_error(reports: list[TaskReport], spec_file: str | None) -> PreflightError:
    problems = [p.error() for r in reports for p in r.errors if p.kind != "offline"]
    return PreflightError(
        f"{len(reports)} task source(s) cannot be read; nothing was written",
        problems,
        location=Location(file=spec_file),
        hint="fix the task files, or set on_source_error: skip in the spec to compile without them",
    )


# ----------------------------------------------------------------------------- output


def _rel(path: str | None) -> str:
    if not path:
        return ""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def format_reports(reports: list[TaskReport]) -> str:
    """One table per task (a row per check; under a failed row, where to fix it and how), then
    a summary line."""
    lines = []
    for r in reports:
        lines.append(f"{r.task}  {r.source}  {'ok' if r.ok else 'PROBLEM'}  ({_rel(r.file)})")
        pending = list(r.problems)
        for name, st, detail in r.checks:
            lines.append(f"  {name:<12} {st:<5} {detail}")
            p = next((p for p in pending if st in ("FAIL", "warn") and p.message == detail), None)
            if p is not None:
                pending.remove(p)
                loc = p.location
                where = f"{_rel(loc.file)}:{loc.line}" if loc.line else _rel(loc.file)
                lines.append(f"{'':20}at {where} ({p.kind})")
                if p.hint:
                    lines.append(f"{'':20}hint: {p.hint}")
    bad = [r.task for r in reports if not r.ok]
    lines.append(
        f"{len(reports)} task(s): {len(reports) - len(bad)} ok"
        + (f", {len(bad)} with problems: {', '.join(bad)}" if bad else "")
    )
    return "\n".join(lines)


def reports_json(reports: list[TaskReport]) -> str:
    return json.dumps(
        {"ok": all(r.ok for r in reports), "tasks": [r.to_dict() for r in reports]},
        indent=2,
        ensure_ascii=False,
    )


__all__ = [
    "HUB_ROOT_ENV",
    "Problem",
    "TaskReport",
    "check_task",
    "check_tasks",
    "format_reports",
    "hub_root",
    "local_repo",
    "local_source_files",
    "preflight",
    "reports_json",
]
