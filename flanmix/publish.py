"""Where flanmix may write: the one guard in front of every output folder (compile, export, train).

Rules, checked by :func:`claim` before anything is written:

- OUT is a folder or nothing: a regular file (or a link to one) at OUT is refused, and so is a
  file where OUT's parent should be, an unwritable parent, and a name too long for the file system.
- ``overwrite`` replaces only what flanmix made: a folder holding a mixture manifest, a LOCO index,
  or the ``.flanmix`` marker written into every export and training run (an empty folder too: it
  holds nothing to lose). Any other folder is refused, whatever the flag says.
- OUT may never be, or contain, a protected path: the current directory, the spec, the catalog
  (task library) and the mixture being read.
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
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import __version__
from .errors import FlanmixError, Location

#: The marker every export and training run holds (compiled mixtures hold manifest.json).
MARKER = ".flanmix"
MIXTURE_MARKERS = ("manifest.json", "loco.json")
#: Markers of other flanmix outputs with their own format (lm-eval task folders).
OTHER_MARKERS = ("flanmix_lm_eval.json",)
#: Legacy training runs (made before the marker): these files together mark one.
RUN_FILES = ("config.yaml", "metrics.jsonl")
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
    """What flanmix made ``folder`` as ("mixture", "export", "run", "empty"), or None."""
    if (folder / MARKER).is_file():
        try:
            return str(json.loads((folder / MARKER).read_text(encoding="utf-8")).get("kind", "?"))
        except (OSError, ValueError, AttributeError):
            return None
    if any((folder / name).is_file() for name in OTHER_MARKERS):
        return "export"
    for name in MIXTURE_MARKERS:
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and "format_version" in data:
                return "mixture"
    if all((folder / f).is_file() for f in RUN_FILES) or any(
        (folder / "checkpoints").glob("step-*/state.pt")
    ):
        return "run"
    try:
        next(folder.iterdir())
    except StopIteration:
        return "empty"
    except OSError:
        return None
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(
    out: str | Path,
    *,
    overwrite: bool,
    protect: Iterable[str | Path | None] = (),
    what: str = "output",
    exists_ok: bool = False,
    error: type[FlanmixError] = OutputError,
) -> Path:
    """Check that flanmix may write ``out`` (see the module doc); returns its absolute path.

    ``exists_ok``: an existing flanmix folder is fine without ``overwrite`` (resuming a run).
    """
    given = str(out)
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
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise error(
                f"{given} is a file, not a folder", location=loc, hint="choose a folder name"
            )
        kind = made_by_flanmix(out)
        if kind is None:
            raise error(
                f"refusing to replace {given}: it is not a folder flanmix made "
                "(no manifest.json or .flanmix marker)",
                location=loc,
                hint="choose a new folder; flanmix never deletes files it did not write",
            )
        if not overwrite and not exists_ok:
            raise error("already exists", location=loc, hint="pass --overwrite to replace it")
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


@contextlib.contextmanager
def lock(out: Path, error: type[FlanmixError] = OutputError) -> Iterator[None]:
    """Hold the exclusive lock of OUT (``.OUT.lock`` next to it); "in use" if another holds it."""
    path = out.parent / f".{out.name}.lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise error(
                f"cannot lock {out}: {exc.strerror}", location=Location(file=str(out))
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise error(
                    f"{out} is in use by another flanmix process",
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
    error: type[FlanmixError] = OutputError,
) -> Iterator[Path]:
    """:func:`check_out` under OUT's lock, held until the block ends; yields OUT's absolute path."""
    out_abs = Path(os.path.abspath(out))
    protect = list(protect)
    kw = dict(overwrite=overwrite, protect=protect, what=what, exists_ok=exists_ok, error=error)
    check_out(out, **kw)
    with lock(out_abs, error):
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


def clean_stale(out: Path) -> list[Path]:
    """Remove temporary folders of writers of ``out`` whose process is gone (and put back an
    ``out`` a killed :func:`publish_dir` had moved aside)."""
    removed = []
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in out.parent.glob(f".{out.name}.old-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
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
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
