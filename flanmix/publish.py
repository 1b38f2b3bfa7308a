"""Where flanmix may write: the one guard in front of every output folder (compile, export, train).

Rules, checked by :func:`claim` before anything is written:

- OUT is a folder or nothing: a regular file (or a link to one) at OUT is refused, and so is a
  file where OUT's parent should be, an unwritable parent, and a name too long for the file system.
- ``overwrite`` replaces only what flanmix made: a folder holding a mixture manifest, a LOCO index,
  or the ``.flanmix`` marker written into every export and training run (an empty folder too: it
  holds nothing to lose), and only while it holds nothing else: a file flanmix did not write there
  (a mixture's are named by its manifest, a staged folder's are listed in its marker when it is
  published, a run's are its run layout) makes it refused, named. Any other folder is refused,
  whatever the flag says. A link to a folder is followed: what it points to is replaced.
- OUT may never be, or contain, a protected path: the current directory, the spec, the catalog
  (task library) and the mixture being read; nor lie inside another flanmix output (a file added
  to a mixture or a run makes it fail its checks).
- One writer per OUT: the claim holds an exclusive ``fcntl`` lock on ``.OUT.lock`` next to OUT
  for the whole write; a second writer fails at once with "in use" instead of racing the first.

What is written is staged: :func:`staging` yields a temporary folder next to OUT
(``.OUT.tmp-<pid>``) and renames it to OUT only when the block ends without an error, so a writer
killed or failing at any point leaves no OUT (or the old one); the next writer removes the
leftovers of dead ones. Every folder flanmix publishes (mixtures, exports, evaluation results)
goes through it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import __version__
from .errors import FlanmixError, Location

#: The marker every export and training run holds (compiled mixtures hold manifest.json).
MARKER = ".flanmix"
MIXTURE_MARKERS = ("manifest.json", "loco.json")
#: Markers of other flanmix outputs with their own format (lm-eval task folders).
OTHER_MARKERS = ("flanmix_lm_eval.json",)
#: What a mixture folder holds besides the shards its manifest lists, and a LOCO root besides its
#: mixture folders.
MIXTURE_FILES = ("manifest.json", "stats.json", "README.md")
LOCO_FILES = ("loco.json", "README.md")
#: What folders flanmix does not stage whole hold (a training run is written as it goes: all
#: under ``model`` and ``checkpoints`` is the run's), and what results folders of an evaluate
#: that did not yet list its files hold.
LAYOUTS = {
    "run": (MARKER, "config.yaml", "metrics.jsonl", "summary.json", "model", "checkpoints"),
    "evaluation": (MARKER, "results.json", "results.md", "predictions.json", "charts"),
    "demo": (MARKER, "mixture", "train", "eval"),  # each part checked when it is replaced
}
NAME_MAX = 255
TMP_ROOM = 24  # '.' + '.tmp-' + a pid, and '.lock'


class OutputError(FlanmixError):
    """An output folder flanmix refuses to write or replace."""


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as made by flanmix (``kind``: export, run) so --overwrite may replace it."""
    (folder / MARKER).write_text(
        json.dumps({"kind": kind, "flanmix_version": __version__}) + "\n", encoding="utf-8"
    )


def made_by_flanmix(folder: Path) -> str | None:
    """What flanmix made ``folder`` as ("mixture", "export", "run", "empty", ...), or None."""
    if (folder / MARKER).is_file():
        try:
            return str(json.loads((folder / MARKER).read_text(encoding="utf-8")).get("kind", "?"))
        except (OSError, ValueError, AttributeError):
            return None
    if any((folder / name).is_file() for name in OTHER_MARKERS):
        return "export"
    for name in MIXTURE_MARKERS:
        if _json_with_version(folder / name) is not None:
            return "mixture"
    try:
        next(folder.iterdir())
    except StopIteration:
        return "empty"
    except OSError:
        return None
    return None


def _json_with_version(path: Path) -> dict | None:
    """A flanmix manifest or LOCO index at ``path`` (a JSON object with a format version), or None."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and "format_version" in data else None


def _files_under(folder: Path) -> list[str]:
    """Every file (and link) under ``folder``, as sorted relative paths; links are not followed."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = [d for d in dirs if d not in links]
        out += [(rel / name).as_posix() for name in [*files, *links]]
    return sorted(out)


def _mixture_files(folder: Path, prefix: str = "") -> set[str] | None:
    """The files a mixture (or a LOCO root) folder holds by its manifest, or None if unreadable."""
    manifest = _json_with_version(folder / "manifest.json")
    if manifest is not None:
        names = set(MIXTURE_FILES)
        splits = manifest.get("splits")
        if not isinstance(splits, dict):
            return None
        for split in splits.values():
            shards = split.get("shards") if isinstance(split, dict) else None
            if not isinstance(shards, list):
                return None
            for shard in shards:
                if isinstance(shard, dict) and isinstance(shard.get("file"), str):
                    names.add(shard["file"])
        return {prefix + n for n in names}
    index = _json_with_version(folder / "loco.json")
    if index is None:
        return None
    names = {prefix + n for n in LOCO_FILES}
    mixtures = index.get("mixtures")
    if not isinstance(mixtures, dict):
        return None
    for entry in mixtures.values():
        sub = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(sub, str) or not sub or "/" in sub or sub.startswith("."):
            return None
        inner = _mixture_files(folder / sub, f"{prefix}{sub}/")
        if inner is None:
            return None
        names |= inner
    return names


def foreign_files(folder: Path, kind: str) -> list[str] | None:
    """Files under ``folder`` (made by flanmix as ``kind``) that flanmix did not write there, as
    sorted relative paths; None when it cannot tell (a marker of an older flanmix, which did not
    list its files)."""
    have = _files_under(folder)
    if kind == "empty":
        return have
    if kind == "mixture" and not (folder / MARKER).is_file():
        mine = _mixture_files(folder)
        return None if mine is None else [f for f in have if f not in mine]
    try:
        listed = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if not isinstance(listed, list) or kind == "run":
        if kind not in LAYOUTS:
            return None
        return [f for f in have if f.split("/", 1)[0] not in LAYOUTS[kind]]
    mine = {MARKER, *(str(f) for f in listed)}
    return [f for f in have if f not in mine]


def imported_catalog_files(folder: Path, marker: str) -> list[str] | None:
    """Files of an imported catalog folder (``marker``, ``clusters.yaml`` and one task file per
    task its clusters.yaml lists) that the import did not write; None if that is unreadable."""
    from .yamlio import load_yaml

    try:
        doc, _ = load_yaml(folder / "clusters.yaml")
    except (FlanmixError, OSError):
        return None
    clusters = doc.get("clusters") if isinstance(doc, dict) else None
    if not isinstance(clusters, dict):
        return None
    mine = {marker, "clusters.yaml"}
    for cluster, entry in clusters.items():
        tasks = entry.get("tasks") if isinstance(entry, dict) else None
        if not isinstance(tasks, list):
            return None
        mine |= {f"task_templates/{cluster}/{t}.yaml" for t in tasks}
    return [f for f in _files_under(folder) if f not in mine]


def refuse_foreign(
    out: Path,
    foreign: list[str] | None,
    error: type[FlanmixError] = OutputError,
    given: str | None = None,
) -> None:
    """Refuse to replace ``out`` if it holds files flanmix did not write (``foreign``, from
    :func:`foreign_files`), or if that cannot be told (None)."""
    loc = Location(file=given or str(out))
    if foreign is None:
        raise error(
            "not replaced: an older flanmix made it without listing its files, so files "
            "added to it cannot be told apart",
            location=loc,
            hint="remove it yourself if nothing in it is yours, or choose a new folder",
        )
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise error(
            f"not replaced: it holds files flanmix did not write ({', '.join(foreign[:3])}{more})",
            location=loc,
            hint="move them out first, or choose a new folder",
        )


def record_files(folder: Path) -> None:
    """List every file of a staged folder in its ``.flanmix`` marker (if it has one), as it is
    published: what ``overwrite`` may replace later (:func:`foreign_files`)."""
    path = folder / MARKER
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    data["files"] = [f for f in _files_under(folder) if f != MARKER]
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(
    out: str | Path,
    *,
    overwrite: bool,
    protect: Iterable[str | Path | None] = (),
    what: str = "output",
    exists_ok: bool = False,
    replace: bool | None = None,
    error: type[FlanmixError] = OutputError,
) -> Path:
    """Check that flanmix may write ``out`` (see the module doc); returns its absolute path (the
    folder a link at ``out`` points to, which is what gets replaced).

    ``exists_ok``: an existing flanmix folder is fine without ``overwrite`` (resuming a run).
    ``replace``: whether an existing OUT will be replaced whole (default: ``overwrite``), so that
    it must hold nothing flanmix did not write.
    """
    given = str(out)
    if not given.strip():
        raise error(f"{what} path is empty", hint="name a folder for the output")
    out = Path(os.path.abspath(out))
    loc = Location(file=given)
    for i, part in enumerate(out.parts):
        # the last name also carries the temporary folder's ".NAME.tmp-<pid>" around it
        limit = NAME_MAX - (TMP_ROOM if i == len(out.parts) - 1 else 0)
        if len(os.fsencode(part)) > limit:
            raise error(
                f"{what} name is too long ({len(os.fsencode(part))} bytes; the limit is {limit})",
                location=loc,
                hint="choose a shorter folder name",
            )
    if out.is_symlink() and not out.exists():
        raise error(
            f"{given} is a broken link (to {os.readlink(out)})",
            location=loc,
            hint="remove the link or choose another folder",
        )
    real = out.resolve()
    guarded = [(Path.cwd().resolve(), "the current directory")]
    guarded += [(Path(p).resolve(), str(p)) for p in protect if p]
    for path, name in guarded:
        if _inside(path, real):
            raise error(
                f"refusing to write {what} at {given}: it would replace {name}",
                location=loc,
                hint="choose a new folder for the output",
            )
    for parent in real.parents:
        kind = (
            made_by_flanmix(parent)
            if (parent / MARKER).is_file()
            or any((parent / m).is_file() for m in (*MIXTURE_MARKERS, *OTHER_MARKERS))
            else None
        )
        if kind not in (None, "empty", "demo"):
            raise error(
                f"refusing to write {what} inside {parent}, a flanmix {kind}: "
                "files added there break its checks",
                location=loc,
                hint="choose a folder outside it",
            )
    if out.exists():
        if not out.is_dir():
            raise error(
                f"{given} is a file, not a folder", location=loc, hint="choose a folder name"
            )
        out = real  # a link to a folder: the folder is what is replaced
        kind = made_by_flanmix(out)
        if kind is None:
            why = (
                "its .flanmix marker is unreadable"
                if (out / MARKER).exists()
                else "no manifest.json or .flanmix marker"
            )
            raise error(
                f"refusing to replace {given}: it is not a folder flanmix made ({why})",
                location=loc,
                hint="choose a new folder; flanmix never deletes files it did not write",
            )
        if not overwrite and not exists_ok:
            raise error("already exists", location=loc, hint="pass --overwrite to replace it")
        if overwrite if replace is None else replace:
            refuse_foreign(out, foreign_files(out, kind), error, given)
    ensure_parent(out, given, error)
    return out


def ensure_parent(
    out: Path, given: str | None = None, error: type[FlanmixError] = OutputError
) -> None:
    """Create OUT's parent folder, turning file-system refusals into one located line."""
    loc = Location(file=given or str(out))
    parent = out.parent
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise error(
                    f"cannot create {given or out}: {p} is a file, not a folder", location=loc
                )
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create {parent}: {exc.strerror}", location=loc) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(
            f"cannot write in {parent}: permission denied",
            location=loc,
            hint="choose a folder you can write to",
        )


def _open_lock(path: Path, out: Path, error: type[FlanmixError]) -> tuple[int, bool] | None:
    """Open (or create) OUT's lock file: (fd, whether it is flanmix's), or None if it vanished."""
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another writer's, a killed writer's, or someone's own file
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:  # its holder removed it meanwhile
                return None
            return fd, re.fullmatch(rb"flanmix \d+\n", os.pread(fd, 64, 0)) is not None
        os.write(fd, f"flanmix {os.getpid()}\n".encode())
        return fd, True
    except OSError as exc:
        raise error(f"cannot lock {out}: {exc.strerror}", location=Location(file=str(out))) from exc


@contextlib.contextmanager
def lock(out: Path, error: type[FlanmixError] = OutputError) -> Iterator[None]:
    """Hold the exclusive lock of OUT (``.OUT.lock`` next to it); "in use" if another holds it.
    The lock file says it is flanmix's; a file of that name that is not is used, and left."""
    path = out.parent / f".{out.name}.lock"
    while True:
        opened = _open_lock(path, out, error)
        if opened is None:
            continue
        fd, ours = opened
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise error(
                    "in use by another flanmix process",
                    location=Location(file=str(out)),
                    hint="wait for it to finish, or write to another folder",
                ) from None
            raise
        try:  # the file may have been removed by its last holder between open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        if ours:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def claim(
    out: str | Path,
    *,
    overwrite: bool,
    protect: Iterable[str | Path | None] = (),
    what: str = "output",
    exists_ok: bool = False,
    replace: bool | None = None,
    error: type[FlanmixError] = OutputError,
) -> Iterator[Path]:
    """:func:`check_out` under OUT's lock, held until the block ends; yields OUT's absolute path
    (what a link at OUT points to)."""
    protect = list(protect)
    kw = dict(
        overwrite=overwrite,
        protect=protect,
        what=what,
        exists_ok=exists_ok,
        replace=replace,
        error=error,
    )
    real = check_out(out, **kw)
    with lock(real, error):
        yield check_out(out, **kw)


def os_error(exc: OSError, where: str | Path) -> OutputError:
    """A located one-line error for a file operation that failed (disk full, quota, read-only)."""
    reason = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
    }.get(exc.errno, exc.strerror or str(exc))
    name = f" ({exc.filename})" if exc.filename else ""
    return OutputError(f"cannot write: {reason}{name}", location=Location(file=str(where)))


# ----------------------------------------------------------------------------- staging


def tmp_dir_for(out: Path) -> Path:
    """The temporary folder a writer of ``out`` fills before :func:`publish_dir` renames it."""
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (someone else's counts: it may be a writer too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(out: Path, kind: str) -> list[tuple[Path, int]]:
    """Folders named exactly ``.OUT.<kind>-<pid>`` next to ``out`` (not links), with their pid."""
    prefix = f".{out.name}.{kind}-"
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return []
    found = []
    for entry in entries:
        rest = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
        if rest.isdigit() and entry.is_dir(follow_symlinks=False):
            found.append((Path(entry.path), int(rest)))
    return found


def clean_stale(out: Path) -> list[Path]:
    """Remove temporary folders of writers of ``out`` whose process is gone (and put back an
    ``out`` a killed :func:`publish_dir` had moved aside). Names are matched exactly (an OUT named
    ``*`` matches nothing else), and a moved-aside folder is removed only if flanmix made it."""
    removed = []
    for p, pid in _leftovers(out, "tmp"):
        if pid == os.getpid() or not pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p, pid in _leftovers(out, "old"):
        if pid_alive(pid):
            continue
        if not out.exists() and not out.is_symlink():  # killed between the two renames: put it back
            p.rename(out)
            removed.append(p)
            continue
        kind = made_by_flanmix(p)
        if kind is not None and foreign_files(p, kind) == []:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def publish_dir(tmp: Path, out: Path) -> None:
    """Move the finished directory into place; an existing OUT is replaced only after success,
    and its replacement keeps its permissions (a private folder stays private)."""
    if out.exists():
        with contextlib.suppress(OSError):
            os.chmod(tmp, stat.S_IMODE(out.stat().st_mode))
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """Stage-then-rename: yields an empty temporary folder next to ``out``; when the block ends
    without an error it replaces ``out`` (by renames), on any error or interrupt it is removed.

    Leftovers of dead writers of ``out`` are removed first (:func:`clean_stale`).
    """
    out = Path(out)
    clean_stale(out)
    tmp = tmp_dir_for(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        record_files(tmp)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
