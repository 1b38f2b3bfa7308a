"""Checking a mixture before it is used: every reader (export, train, evaluate) and ``flanmix verify``.

A mixture passes when its manifest is consistent and its folder holds exactly what the manifest
lists:

- the manifest has ``splits`` with ``shards`` entries holding ``file``, ``rows``, ``sha256``; each
  split's ``rows`` is the sum of its shards' rows; the splits are ``train`` and ``eval``;
- every shard path is a plain file name inside the folder (no ``../``, no absolute path, no link);
- every shard's sha256 (streamed, 1 MiB at a time) and byte size match;
- the row count of each shard's file (from its Parquet footer / Arrow stream) matches the manifest;
- each shard's Arrow schema (from the same footer) is the mixture's: the columns of
  :data:`flanmix.mixture.SCHEMA`, their types, no nulls allowed where a row needs a value;
- no data file (``.parquet``, ``.arrow``, ``.jsonl``, ``.json``, ``.csv``) is left unlisted, because
  ``datasets.load_dataset(folder)`` would read it.

``flanmix verify`` also reads every row for what the footer cannot say: no null ``inputs`` or
``targets`` (or any other required column), and an ``answer_index`` within ``[0, len(options))``
wherever ``options`` is set.

Readers call :func:`open_verified`, which raises the first problem as a one-line located error;
``--no-verify`` skips the hashing (for a mixture too large to re-read every time).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from .errors import Location, MixtureError
from .mixture import MANIFEST, SCHEMA, SPLITS, Mixture, manifest_errors, sha256_file

DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv")
SIDE_FILES = {MANIFEST, "stats.json"}


def _shard_footer(path: Path, file_format: str) -> tuple[int, Any]:
    """A shard's row count and Arrow schema, from its Parquet footer (no row is read) or its
    Arrow stream."""
    import pyarrow as pa

    if file_format == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as f:
            return f.metadata.num_rows, f.schema_arrow
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        return sum(b.num_rows for b in reader), reader.schema


def _same_type(got: Any, want: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_list(got) and pa.types.is_list(want):  # the item's name is the writer's choice
        return _same_type(got.value_type, want.value_type)
    return got.equals(want)


def schema_problem(schema: Any) -> str | None:
    """How a shard's Arrow schema differs from the mixture's (:data:`flanmix.mixture.SCHEMA`):
    a missing or extra column, another type, or nulls allowed where every row needs a value."""
    names = set(schema.names)
    for want in SCHEMA:
        if want.name not in names:
            return f"no {want.name!r} column"
    extra = [n for n in schema.names if n not in SCHEMA.names]
    if extra:
        return f"unexpected column {extra[0]!r}"
    if len(schema.names) != len(names):
        dup = next(n for n in schema.names if schema.names.count(n) > 1)
        return f"column {dup!r} appears twice"
    for want in SCHEMA:
        got = schema.field(want.name)
        if not _same_type(got.type, want.type):
            return f"column {want.name!r} is {got.type}, the mixture schema says {want.type}"
        if got.nullable and not want.nullable:
            return f"column {want.name!r} allows nulls, the mixture schema requires a value"
    return None


def row_problem(mixture: Mixture, shard: dict[str, Any]) -> str | None:
    """The first row of a shard that breaks an invariant readers rely on: a null in a column
    that needs a value, ``answer_index`` outside ``[0, len(options))`` or missing when
    ``options`` is set. Reads the shard (``flanmix verify`` only, not every open)."""
    import pyarrow.compute as pc

    required = [f.name for f in SCHEMA if not f.nullable]
    offset = 0
    for batch in mixture.iter_shard(shard, columns=[*required, "options", "answer_index"]):
        for name in required:
            column = batch.column(name)
            if column.null_count:
                i = pc.index(column.is_null(), True).as_py()
                return f"row {offset + i}: {name} is null"
        options, answer = batch.column("options"), batch.column("answer_index")
        n = pc.list_value_length(options)
        bad = pc.and_kleene(
            options.is_valid(),
            pc.or_kleene(
                answer.is_null(),
                pc.or_kleene(pc.less(answer, 0), pc.greater_equal(answer, n)),
            ),
        )
        if pc.any(bad).as_py():
            i = pc.index(bad, True).as_py()
            got = answer[i].as_py()
            count = n[i].as_py()
            if got is None:
                return f"row {offset + i}: answer_index is null but the row has {count} options"
            return (
                f"row {offset + i}: answer_index {got} is outside the row's {count} options "
                f"(0 to {count - 1})"
            )
        offset += batch.num_rows
    return None


def manifest_problems(manifest: Any) -> list[str]:
    """Problems of the manifest's shape alone (no file is read)."""
    if not isinstance(manifest, dict):
        return ["manifest is not a JSON object"]
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        return ["manifest lists no splits"]
    problems = []
    for split, info in splits.items():
        if split not in SPLITS:
            problems.append(f"manifest: unknown split {split!r}")
            continue
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list):
            problems.append(f"manifest: split {split!r} has no shard list")
            continue
        total = 0
        for i, shard in enumerate(shards):
            missing = [
                k
                for k in ("file", "rows", "sha256")
                if not isinstance(shard, dict) or k not in shard
            ]
            if missing:
                problems.append(f"manifest: {split} shard {i} lacks {', '.join(missing)}")
                continue
            if not isinstance(shard["rows"], int) or isinstance(shard["rows"], bool):
                problems.append(f"manifest: {split} shard {i} rows is not a whole number")
                continue
            total += shard["rows"]
            name = shard["file"]
            pure = PurePosixPath(name) if isinstance(name, str) else None
            if (
                pure is None
                or pure.is_absolute()
                or len(pure.parts) != 1
                or name in ("", ".", "..")
            ):
                problems.append(f"manifest: shard path {name!r} is outside the mixture folder")
        if "rows" in info and info["rows"] != total:
            problems.append(
                f"manifest: {split} says {info['rows']} rows but its shards hold {total}"
            )
    if not problems:  # the rest of the typed manifest: every key a reader needs
        problems = [f"manifest: {e}" for e in manifest_errors(manifest)]
    return problems


def mixture_problems(mixture: Mixture, *, hashes: bool = True, rows: bool = False) -> list[str]:
    """Every problem found in a mixture folder (empty when it is intact).

    Each shard's schema is checked from its footer whatever ``hashes`` says; ``rows`` also reads
    every row for the invariants of :func:`row_problem` (``flanmix verify``)."""
    problems = manifest_problems(mixture.manifest)
    if problems:
        return problems
    listed = set()
    root = mixture.path.resolve()
    for split in SPLITS:
        for shard in mixture.shards(split):
            name = shard["file"]
            listed.add(name)
            path = mixture.path / name
            if path.is_symlink() or path.resolve().parent != root:
                problems.append(f"{name}: not a file inside the mixture folder")
            elif not path.is_file():
                problems.append(f"{name}: missing")
            elif "bytes" in shard and path.stat().st_size != shard["bytes"]:
                problems.append(
                    f"{name}: sha256 mismatch (file changed after compile: "
                    f"{path.stat().st_size} bytes, the manifest says {shard['bytes']})"
                )
            elif hashes and sha256_file(path) != shard["sha256"]:
                problems.append(f"{name}: sha256 mismatch (file changed after compile)")
            else:
                try:
                    count, schema = _shard_footer(path, mixture.file_format)
                except Exception as exc:  # noqa: BLE001 - any reader error means a corrupt shard
                    problems.append(f"{name}: unreadable ({type(exc).__name__})")
                    continue
                if count != shard["rows"]:
                    problems.append(f"{name}: {count} rows, the manifest says {shard['rows']}")
                else:
                    bad = schema_problem(schema) or (rows and row_problem(mixture, shard))
                    if bad:
                        problems.append(f"{name}: {bad}")
    if hashes and not problems:
        problems += content_problems(mixture)
    for path in sorted(mixture.path.rglob("*")):
        rel = path.relative_to(mixture.path).as_posix()
        if path.suffix in DATA_SUFFIXES and rel not in listed and rel not in SIDE_FILES:
            problems.append(f"{rel}: data file not listed in the manifest (datasets would read it)")
    return problems


def content_problems(mixture: Mixture) -> list[str]:
    """The manifest's claims about the rows against the rows themselves (the ``task`` column):
    rows per task and split, nothing held out in train, nothing but held-out tasks in eval. An
    edited manifest (a holdout cleared, counts changed) shows up here."""
    from collections import Counter

    m = mixture.manifest
    got: dict[str, Counter] = {}
    for split in SPLITS:
        if mixture.shards(split):
            got[split] = Counter()
            for batch in mixture.iter_batches(split, columns=["task"]):
                got[split].update(batch.column(0).to_pylist())
    problems = []
    counts = m.get("counts")
    for split, actual in got.items():
        want = counts.get(split, {}).get("task") if isinstance(counts, dict) else None
        if not isinstance(want, dict):
            continue
        want = {t: n for t, n in want.items() if n}
        if want != dict(actual):
            diff = sorted(set(want) | set(actual), key=lambda t: (want.get(t) == actual.get(t), t))
            t = diff[0]
            problems.append(
                f"manifest: {split} rows of {t!r}: the manifest says {want.get(t, 0)}, "
                f"the shards hold {actual.get(t, 0)}"
            )
    holdout = m.get("holdout")
    held = set(holdout.get("tasks") or []) if isinstance(holdout, dict) else None
    if held is not None:
        leaked = sorted(t for t in got.get("train", {}) if t in held)
        if leaked:
            problems.append(f"manifest holds out {leaked[0]!r}, but the train split has its rows")
        stray = sorted(t for t in got.get("eval", {}) if t not in held)
        if stray:
            problems.append(
                f"the eval split has rows of {stray[0]!r}, which the manifest does not hold out"
            )
    return problems


def open_verified(path: str | Path, *, verify: bool = True) -> Mixture:
    """Open a mixture for reading; unless ``verify`` is false, refuse one that fails a check."""
    mixture = Mixture.open(path)
    problems = mixture_problems(mixture, hashes=verify)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise MixtureError(
            f"mixture failed verification: {problems[0]}{more}",
            location=Location(file=str(mixture.path)),
            hint=f"run 'flanmix verify {path}' for the full list; recompile the mixture",
        )
    return mixture
