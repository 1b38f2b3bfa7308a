"""``flanmix sources build``: a task's local Parquet made from the original public release files.

Some task sources have no copy on the hub that ``datasets>=4`` can load (the repository holds only a
loading script, or the data must be requested by hand). For those, a converter here reads the files
as their authors released them and writes ``<out>/<split>.parquet`` in the task's real schema
(its ``fields``), one file per source split. Every row is checked against the task's fields before
anything is published: OUT goes through flanmix's output guard (:func:`flanmix.publish.claim`: a
new folder, or with ``--overwrite`` one flanmix made; never a folder holding anyone else's files,
nor one holding the release being read), and is written in a temporary folder renamed into place.

Each converter is one small function ``(Release) -> {split: rows}``; :class:`Release` finds a named
file in the folder given with ``--from`` (searched recursively, and inside ``.zip``/``.tar``/
``.tar.gz``/``.tgz`` archives found there, so a downloaded archive can be passed as it is).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import itertools
import json
import random
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Location, SourceError
from .publish import MARKER, claim, os_error, record_files, staging, write_marker
from .schema import FieldSpec, Task

Rows = Iterable[dict[str, Any]]

_ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz")


class _Counted(io.BufferedIOBase):
    """A binary stream that counts the bytes read from it: where a decoding error is in the file."""

    def __init__(self, raw):
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self.count += len(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        read1 = getattr(self._raw, "read1", self._raw.read)
        data = read1(-1 if size is None else size)
        self.count += len(data)
        return data

    def close(self) -> None:
        self._raw.close()
        super().close()


def _not_utf8(where: str, stream: io.TextIOWrapper, exc: UnicodeDecodeError, task: str):
    """The located error for bytes that are not UTF-8: the byte and its offset in the file (the
    decoder saw ``exc.object``, the last bytes read so far)."""
    offset = stream.buffer.count - len(exc.object) + exc.start
    return SourceError(
        f"{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {offset})",
        location=Location(task=task),
        hint="the release files are UTF-8: use the files as their authors released them",
    )


class Release:
    """The original release files of a dataset: a folder, a single file or an archive."""

    def __init__(self, path: Path, task: str):
        self.path = Path(path)
        self.task = task
        if not self.path.exists():
            raise SourceError(
                f"--from {self.path}: no such file or folder", location=Location(task=task)
            )

    def _candidates(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.rglob("*") if p.is_file())

    def find(self, *names: str) -> tuple[str, Callable[[], Any]] | None:
        """The first file whose path ends with one of ``names`` (as ``/name``): where it is and a
        function opening it for binary reading (streamed, never read whole)."""

        def matches(member: str) -> bool:
            member = member.replace("\\", "/")
            return any(member == n or member.endswith("/" + n) for n in names)

        files = self._candidates()
        for path in files:
            if matches(path.as_posix()):
                return str(path), path.open("rb")
        for path in files:
            lower = path.name.lower()
            if lower.endswith(".zip"):
                archive = zipfile.ZipFile(path)  # noqa: SIM115 - the member stream outlives this call
                for member in archive.namelist():
                    if matches(member):
                        return f"{path}!{member}", archive.open(member)
            elif lower.endswith((".tar", ".tar.gz", ".tgz")):
                archive = tarfile.open(path)  # noqa: SIM115 - the member stream outlives this call
                for member in archive:
                    if member.isfile() and matches(member.name):
                        return f"{path}!{member.name}", archive.extractfile(member)
        return None

    def open(self, *names: str, encoding: str = "utf-8") -> tuple[str, io.TextIOBase]:
        """(where, text stream) of the first of ``names`` found; ``.gz``/``.bz2`` copies too."""
        found = self.find(*names, *(n + ".gz" for n in names), *(n + ".bz2" for n in names))
        if found is None:
            raise SourceError(
                f"none of {', '.join(names)} found in {self.path} (or in archives there)",
                location=Location(task=self.task),
                hint=f"run `flanmix sources build {self.task}` without --from to see what it needs",
            )
        where, raw = found
        if where.endswith(".gz"):
            raw = gzip.GzipFile(fileobj=raw)
        elif where.endswith(".bz2"):
            raw = bz2.BZ2File(raw)
        return where, io.TextIOWrapper(_Counted(raw), encoding=encoding, newline="")

    def text(self, *names: str, encoding: str = "utf-8") -> tuple[str, str]:
        where, stream = self.open(*names, encoding=encoding)
        with stream:
            try:
                return where, stream.read()
            except UnicodeDecodeError as exc:
                raise _not_utf8(where, stream, exc, self.task) from None

    def lines(self, *names: str, encoding: str = "utf-8") -> tuple[str, Iterator[str]]:
        """(where, lines without their line ends), streamed."""
        where, stream = self.open(*names, encoding=encoding)

        def gen() -> Iterator[str]:
            with stream:
                try:
                    for line in stream:
                        yield line.rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    raise _not_utf8(where, stream, exc, self.task) from None

        return where, gen()

    def json(self, name: str) -> tuple[str, Any]:
        """(where, the file's JSON value); a file that is not JSON is one located line."""
        where, text = self.text(name)
        return where, _json(text, where, self.task)

    def error(self, where: str, message: str) -> SourceError:
        return SourceError(f"{where}: {message}", location=Location(task=self.task))


def _json(text: str, where: str, task: str, line: int | None = None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"{where}:{line or exc.lineno}"
        raise SourceError(
            f"{at}: not JSON: {exc.msg} (column {exc.colno})", location=Location(task=task)
        ) from None
    except RecursionError:
        raise SourceError(
            f"{where}{f':{line}' if line else ''}: not JSON this reader can take: nested too deep",
            location=Location(task=task),
        ) from None


def _record(release: Release, where: str, item: Any, convert: Callable) -> Any:
    """``convert(item)`` for one record of a release file; a missing key or a value of another
    kind is one line naming ``where`` (the file and the record)."""
    try:
        return convert(item)
    except KeyError as exc:
        raise release.error(where, f"no {exc.args[0]!r}") from None
    except (TypeError, AttributeError, ValueError, IndexError) as exc:
        raise release.error(where, f"not the release's layout ({exc})") from None


def _records(release: Release, where: str, items: Any, convert: Callable, what: str) -> list:
    """``convert`` applied to each item of a release's JSON list (see :func:`_record`)."""
    if not isinstance(items, list):
        raise release.error(where, f"expected a JSON list of {what}s, found {type(items).__name__}")
    return [_record(release, f"{where}: {what} {i}", item, convert) for i, item in enumerate(items)]


def _some(release: Release, where: str, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``rows`` as they come; a file that gives none is an error naming it (a build that
    "succeeds" with an empty split would only fail later, at compile)."""
    n = 0
    for row in rows:
        n += 1
        yield row
    if n == 0:
        raise release.error(where, "no rows (an empty file)")


def _pairs(release: Release, a: tuple[str, Iterator[str]], b: tuple[str, Iterator[str]]):
    """Lines of two parallel files, in step; a length mismatch is an error."""
    missing = object()
    for x, y in itertools.zip_longest(a[1], b[1], fillvalue=missing):
        if x is missing or y is missing:
            raise SourceError(
                f"{a[0]} and {b[0]} have different numbers of lines",
                location=Location(task=release.task),
            )
        yield x, y


@dataclass(frozen=True)
class Builder:
    """How to build one task: the release files it reads (shown to people) and the converter."""

    task: str
    files: str
    convert: Callable[[Release], dict[str, Rows]]


# ----------------------------------------------------------------------------- converters


def _story_cloze(release: Release) -> dict[str, Rows]:
    """Story Cloze Test 2016 CSVs (header row, then 8 columns per story)."""

    def read(name: str) -> list[dict[str, Any]]:
        where, text = release.text(name)
        if not text.partition("\n")[2].strip():  # the header alone, or nothing
            raise release.error(where, "no rows (an empty file, or a header alone)")
        reader = csv.reader(io.StringIO(text), skipinitialspace=True)
        next(reader, None)
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) != 8:
                raise SourceError(
                    f"{where}: expected 8 columns (story id, 4 sentences, 2 endings, answer), "
                    f"got {len(row)}",
                    location=Location(task=release.task),
                )
            # the templates index the endings by answer - 1: a 0 would pick ending 2
            answer = int(row[7]) if row[7].strip() in ("1", "2") else None
            if answer is None:
                raise SourceError(
                    f"{where} line {reader.line_num}: AnswerRightEnding is {row[7]!r}, "
                    "expected 1 or 2",
                    location=Location(task=release.task),
                    hint="the Story Cloze Test 2016 CSVs number the right ending 1 or 2",
                )
            rows.append(
                {
                    "story_id": row[0],
                    **{f"input_sentence_{i}": row[i] for i in range(1, 5)},
                    "sentence_quiz1": row[5],
                    "sentence_quiz2": row[6],
                    "answer_right_ending": answer,
                }
            )
        return rows

    return {
        "validation": read("cloze_test_val__spring2016 - cloze_test_ALL_val.csv"),
        "test": read("cloze_test_test__spring2016 - cloze_test_ALL_test.csv"),
    }


_NEWSROOM_TEXT = ("text", "summary", "title", "url", "date", "density_bin", "coverage_bin")
_NEWSROOM_FLOAT = ("density", "coverage", "compression")


def _newsroom(release: Release) -> dict[str, Rows]:
    """NEWSROOM jsonl files (one article per line); dev is the validation split."""

    def article(d: dict[str, Any]) -> dict[str, Any]:
        row = {k: d[k] for k in (*_NEWSROOM_TEXT, "compression_bin")}
        row.update({k: float(d[k]) for k in _NEWSROOM_FLOAT})
        return row

    def read(name: str) -> Iterator[dict[str, Any]]:
        where, lines = release.lines(name)
        n = 0
        for i, line in enumerate(lines, 1):
            if line.strip():
                d = _json(line, where, release.task, line=i)
                yield _record(release, f"{where}:{i}", d, article)
                n += 1
        if n == 0:
            raise release.error(where, "no rows (an empty file)")

    return {
        "train": read("train.jsonl"),
        "validation": read("dev.jsonl"),
        "test": read("test.jsonl"),
    }


def _holdout_split(rows: list[dict[str, Any]]) -> dict[str, Rows]:
    """The opinion abstracts corpus has one split: shuffle with seed 0, last 5% is validation."""
    random.Random(0).shuffle(rows)
    cut = len(rows) - max(1, len(rows) // 20)
    return {"train": rows[:cut], "validation": rows[cut:]}


def _opinion_abstracts(release: Release, filename: str, mapping: Callable) -> dict[str, Rows]:
    where, items = release.json(filename)
    rows = _records(release, where, items, mapping, "entry")
    if not rows:
        raise release.error(where, "no rows (an empty list)")
    return _holdout_split(rows)


def _idebate(release: Release) -> dict[str, Rows]:
    """opinion_abstracts.zip -> idebate.json: a list of claims with their argument sentences."""
    return _opinion_abstracts(
        release,
        "idebate.json",
        lambda d: {
            "topic": d["_debate_name"],
            "arguments": list(d["_argument_sentences"].values()),
            "claim": d["_claim"],
        },
    )


def _rotten_tomatoes(release: Release) -> dict[str, Rows]:
    """opinion_abstracts.zip -> rottentomatoes.json: a list of movies with critics and consensus."""
    return _opinion_abstracts(
        release,
        "rottentomatoes.json",
        lambda d: {
            "title": d["_movie_name"],
            "critic_reviews": list(d["_critics"].values()),
            "consensus": d["_critic_consensus"],
        },
    )


_MATH_MODULE = "algebra__linear_1d.txt"


def _math_dataset(release: Release) -> dict[str, Rows]:
    """mathematics_dataset-v1.0: question and answer lines alternate in each module file.

    train = train-easy + train-medium + train-hard, test = interpolate (as the hub's script did),
    decoded as text (the script's rows were the repr of Python bytes, ``b'-4\\n'``).
    """

    def read(category: str) -> list[dict[str, Any]]:
        where, stream = release.lines(f"{category}/{_MATH_MODULE}")
        lines = [line for line in stream if line.strip()]
        if not lines:
            raise release.error(where, "no rows (an empty file)")
        if len(lines) % 2:
            raise SourceError(
                f"{where}: odd number of lines; questions and answers must alternate",
                location=Location(task=release.task),
            )
        return [
            {"question": q.strip(), "answer": a.strip()}
            for q, a in zip(lines[::2], lines[1::2], strict=True)
        ]

    train = [row for level in ("easy", "medium", "hard") for row in read(f"train-{level}")]
    return {"train": train, "test": read("interpolate")}


def _para_crawl_enes(release: Release) -> dict[str, Rows]:
    """ParaCrawl en-es plain text: one ``english<TAB>spanish`` pair per line (gzip accepted)."""
    where, lines = release.lines("en-es.bicleaner07.txt", "en-es.txt")

    def rows() -> Iterator[dict[str, Any]]:
        for i, line in enumerate(lines, 1):
            parts = line.strip().split("\t")
            if len(parts) < 2:
                raise SourceError(
                    f"{where}:{i}: expected 'english<TAB>spanish'",
                    location=Location(task=release.task),
                )
            yield {"translation": {"en": parts[0].strip(), "es": parts[1].strip()}}

    return {"train": _some(release, where, rows())}


def _gigaword(release: Release) -> dict[str, Rows]:
    """Rush et al.'s org_data: <split>.src.txt / <split>.tgt.txt, one pair per line number.

    As in the hub's script, ``<unk>`` becomes ``UNK`` in train and dev (the test split already
    uses ``UNK``).
    """

    def read(split: str, replace_unk: bool) -> Iterator[dict[str, Any]]:
        src = release.lines(f"org_data/{split}.src.txt")
        tgt = release.lines(f"org_data/{split}.tgt.txt")
        for doc, summary in _some(release, src[0], _pairs(release, src, tgt)):
            doc, summary = doc.strip(), summary.strip()
            if replace_unk:
                doc, summary = doc.replace("<unk>", "UNK"), summary.replace("<unk>", "UNK")
            yield {"document": doc, "summary": summary}

    return {
        "train": read("train", True),
        "validation": read("dev", True),
        "test": read("test", False),
    }


def _multi_news(release: Release) -> dict[str, Rows]:
    """Multi-News <split>.src.cleaned / <split>.tgt: articles joined by '|||||', newlines coded
    as NEWLINE_CHAR (restored here); val is the validation split."""

    def read(name: str) -> Iterator[dict[str, Any]]:
        src = release.lines(f"{name}.src.cleaned")
        tgt = release.lines(f"{name}.tgt")
        for doc, summary in _some(release, src[0], _pairs(release, src, tgt)):
            yield {
                "document": doc.strip().replace("NEWLINE_CHAR", "\n"),
                "summary": summary.strip(),
            }

    return {"train": read("train"), "validation": read("val"), "test": read("test")}


_QUAC_FOLLOWUP = {"y": 0, "n": 1, "m": 2}
_QUAC_YESNO = {"y": 0, "n": 1, "x": 2}


def _quac_dialogues(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one QuAC section: one per dialogue (paragraph)."""
    rows = []
    for dialogue in section["paragraphs"]:
        turns = dialogue["qas"]
        rows.append(
            {
                "dialogue_id": dialogue["id"],
                "wikipedia_page_title": section.get("title", "").strip(),
                "background": section.get("background", "").strip(),
                "section_title": section.get("section_title", "").strip(),
                "context": dialogue["context"].strip(),
                "turn_ids": [t["id"] for t in turns],
                "questions": [t["question"] for t in turns],
                "followups": [_QUAC_FOLLOWUP[t["followup"]] for t in turns],
                "yesnos": [_QUAC_YESNO[t["yesno"]] for t in turns],
                "answers": {
                    "texts": [[a["text"].strip() for a in t["answers"]] for t in turns],
                    "answer_starts": [[a["answer_start"] for a in t["answers"]] for t in turns],
                },
                "orig_answers": {
                    "texts": [t["orig_answer"]["text"] for t in turns],
                    "answer_starts": [t["orig_answer"]["answer_start"] for t in turns],
                },
            }
        )
    return rows


def _quac(release: Release) -> dict[str, Rows]:
    """QuAC v0.2 JSON (SQuAD-shaped): one row per dialogue, turn-level lists as in allenai/quac."""

    def read(name: str) -> list[dict[str, Any]]:
        where, data = release.json(name)
        if not isinstance(data, dict) or "data" not in data:
            raise release.error(where, "expected a JSON object with 'data' (QuAC v0.2)")
        sections = _records(release, where, data["data"], _quac_dialogues, "section")
        rows = [row for section in sections for row in section]
        if not rows:
            raise release.error(where, "no rows (no dialogues)")
        return rows

    return {"train": read("train_v0.2.json"), "validation": read("val_v0.2.json")}


def _samsum(release: Release) -> dict[str, Rows]:
    """SAMSum corpus.7z contents: train.json, val.json, test.json, each a list of
    {id, summary, dialogue}; val is the validation split."""

    def read(name: str) -> list[dict[str, Any]]:
        where, items = release.json(name)
        rows = _records(
            release,
            where,
            items,
            lambda d: {"id": str(d["id"]), "dialogue": d["dialogue"], "summary": d["summary"]},
            "dialogue",
        )
        if not rows:
            raise release.error(where, "no rows (an empty list)")
        return rows

    return {"train": read("train.json"), "validation": read("val.json"), "test": read("test.json")}


def _cot_tsv(filename: str) -> Callable[[Release], dict[str, Rows]]:
    """One of FLAN v2's chain-of-thought files (flan/v2/cot_data/*_train.tsv in
    github.com/google-research/FLAN): no header, one example per line, three tab-separated
    columns question, answer, rationale, line breaks inside a field written as the two
    characters ``\\n``. FLAN released only training rows: the split is ``train``."""

    def convert(release: Release) -> dict[str, Rows]:
        where, lines = release.lines(filename)

        def rows() -> Iterator[dict[str, Any]]:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 3:
                    raise SourceError(
                        f"{where}, line {n}: {len(parts)} tab-separated columns, expected 3 "
                        "(question, answer, rationale)",
                        location=Location(task=release.task),
                    )
                question, answer, rationale = (p.replace("\\n", "\n").strip() for p in parts)
                yield {"question": question, "answer": answer, "rationale": rationale}

        return {"train": _some(release, where, rows())}

    return convert


_COT_FILES = (
    "{name}_train.tsv from flan/v2/cot_data/ of a checkout of "
    "https://github.com/google-research/FLAN (`git clone https://github.com/google-research/FLAN`, "
    "then --from FLAN/flan/v2/cot_data)"
)


BUILDERS: dict[str, Builder] = {
    b.task: b
    for b in (
        Builder(
            "story_cloze",
            "the Story Cloze Test 2016 CSVs 'cloze_test_val__spring2016 - cloze_test_ALL_val.csv' "
            "and 'cloze_test_test__spring2016 - cloze_test_ALL_test.csv' (request them at "
            "https://cs.rochester.edu/nlp/rocstories/)",
            _story_cloze,
        ),
        Builder(
            "newsroom",
            "NEWSROOM train.jsonl, dev.jsonl, test.jsonl (or their .gz), from "
            "https://lil.nlp.cornell.edu/newsroom/ (registration)",
            _newsroom,
        ),
        Builder(
            "opinion_abstracts_idebate",
            "opinion_abstracts.zip (or the idebate.json inside it), Wang & Ling 2016, "
            "http://www.ccs.neu.edu/home/luwang/datasets/opinion_abstracts.zip",
            _idebate,
        ),
        Builder(
            "opinion_abstracts_rotten_tomatoes",
            "opinion_abstracts.zip (or the rottentomatoes.json inside it), Wang & Ling 2016, "
            "http://www.ccs.neu.edu/home/luwang/datasets/opinion_abstracts.zip",
            _rotten_tomatoes,
        ),
        Builder(
            "math_dataset",
            "mathematics_dataset-v1.0.tar.gz (or its extracted folder), "
            "https://storage.googleapis.com/mathematics-dataset/mathematics_dataset-v1.0.tar.gz",
            _math_dataset,
        ),
        Builder(
            "para_crawl_enes",
            "ParaCrawl release 4 en-es.bicleaner07.txt.gz (any en-es.txt[.gz] with "
            "'english<TAB>spanish' lines), https://s3.amazonaws.com/web-language-models/paracrawl/"
            "release4/en-es.bicleaner07.txt.gz",
            _para_crawl_enes,
        ),
        Builder(
            "gigaword",
            "org_data/{train,dev,test}.{src,tgt}.txt, or the zip holding them (the hub repo "
            "Harvard/gigaword hosts it under data/: `hf download Harvard/gigaword --repo-type "
            "dataset --include 'data/*' --local-dir DIR`)",
            _gigaword,
        ),
        Builder(
            "multi_news",
            "{train,val,test}.src.cleaned and {train,val,test}.tgt (the hub repo "
            "alexfabbri/multi_news hosts them under data/: `hf download alexfabbri/multi_news "
            "--repo-type dataset --include 'data/*' --local-dir DIR`)",
            _multi_news,
        ),
        Builder(
            "samsum",
            "train.json, val.json and test.json extracted from data/corpus.7z of the hub repo "
            "Samsung/samsum (the authors' release; `7z x corpus.7z`)",
            _samsum,
        ),
        *(
            Builder(f"cot_{name}", _COT_FILES.format(name=name), _cot_tsv(f"{name}_train.tsv"))
            for name in ("creak", "ecqa", "esnli", "sensemaking", "aqua", "qed")
        ),
        Builder(
            "quac",
            "train_v0.2.json and val_v0.2.json from https://quac.ai/ "
            "(https://s3.amazonaws.com/my89public/quac/train_v0.2.json, .../val_v0.2.json)",
            _quac,
        ),
    )
}


def build_hint(task_id: str) -> str | None:
    """What to run to make a buildable task's local files, or None for other tasks."""
    builder = BUILDERS.get(task_id)
    if builder is None:
        return None
    return (
        f"build them with `flanmix sources build {task_id} --from DIR`, DIR holding {builder.files}"
    )


# ----------------------------------------------------------------------------- writing


def _arrow_type(spec: FieldSpec):
    import pyarrow as pa

    if spec.type == "string":
        return pa.string()
    if spec.type in ("int", "class_label"):
        return pa.int64()
    if spec.type == "float":
        return pa.float64()
    if spec.type == "bool":
        return pa.bool_()
    if spec.type == "list":
        return pa.list_(_arrow_type(spec.item))
    return pa.struct([(name, _arrow_type(s)) for name, s in (spec.fields or {}).items()])


def default_out(task: Task, task_path: Path) -> Path | None:
    """The folder a local-source task reads its Parquet files from (None for hub tasks)."""
    local = task.source.local
    if local is None or local.format != "parquet":
        return None
    folders = {
        (task_path.parent / (f if isinstance(f, str) else f[0])).parent
        for f in local.files.values()
    }
    return folders.pop() if len(folders) == 1 else None


def build(
    task: Task,
    source: Path,
    out: Path,
    *,
    overwrite: bool = False,
    batch_rows: int = 50_000,
    protect: Iterable[Path] = (),
) -> dict[str, int]:
    """Convert the release files at ``source`` into ``out/<split>.parquet``; rows per split.

    OUT is claimed like every flanmix output (:func:`flanmix.publish.claim`): it must be new, or,
    with ``overwrite``, a folder flanmix made (an earlier build, marked ``.flanmix``) or an empty
    one; it may not hold ``source`` nor anything in ``protect``. Raises :class:`SourceError` for a
    task without a converter, missing or malformed release files, a row that does not fit the
    task's fields, or an OUT it may not write. Nothing is published unless every split converts.
    """
    import pyarrow as pa

    builder = BUILDERS.get(task.id)
    loc = Location(task=task.id, field="source")
    if builder is None:
        raise SourceError(
            f"no `sources build` converter for {task.id}: its source is on the hub",
            location=loc,
            hint="tasks with a converter: " + ", ".join(sorted(BUILDERS)),
        )
    release = Release(source, task.id)
    splits = builder.convert(release)
    schema = pa.schema([(name, _arrow_type(spec)) for name, spec in task.fields.items()])
    _mark_earlier_build(Path(out), splits)
    counts: dict[str, int] = {}
    try:
        with (
            claim(
                out,
                overwrite=overwrite,
                protect=[source, *protect],
                what=f"the built files of {task.id}",
                error=SourceError,
            ) as out,
            staging(out) as tmp,
        ):
            for split, rows in splits.items():
                path = tmp / f"{split}.parquet"
                counts[split] = _write(task, split, rows, path, schema, batch_rows, loc)
            write_marker(tmp, "source")
    except OSError as exc:  # disk full, read-only folder ...: one line, nothing published
        raise os_error(exc, out) from exc
    return counts


def _mark_earlier_build(out: Path, splits: Iterable[str]) -> None:
    """Mark a folder a ``sources build`` wrote before builds were marked, so ``--overwrite`` may
    replace it: it holds nothing but some of the ``<split>.parquet`` files this build writes."""
    if not out.is_dir() or out.is_symlink() or (out / MARKER).exists():
        return
    names = {f"{split}.parquet" for split in splits}
    found = list(out.iterdir())
    if found and all(p.is_file() and not p.is_symlink() and p.name in names for p in found):
        write_marker(out, "source")
        record_files(out)  # those files are the build's: --overwrite may replace them


def _write(task: Task, split: str, rows: Rows, path: Path, schema, batch_rows: int, loc) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            for name, spec in task.fields.items():
                problem = spec.check(row.get(name), name) if name in row else f"{name}: missing"
                if problem:
                    raise SourceError(
                        f"built row {n} of split {split!r} does not fit the task's fields: "
                        f"{problem}",
                        location=loc,
                    )
            batch.append(row)
            n += 1
            if len(batch) >= batch_rows:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch or n == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return n
