"""Where workers put their files: a local folder or any fsspec URL (``s3://``, ``gs://``, ``file://``).

A compile's workers write their sorted runs and shards through these few functions, so a cluster can use
shared storage for them (``executor.scratch`` in the spec, ``--scratch`` on the command line) while
a local compile keeps its plain files inside the staging folder next to OUT. Local paths go
straight to the file system (memory-mapped reads, no fsspec on the hot path); URLs go through
fsspec, which ``datasets`` already installs (``s3fs``/``gcsfs`` are needed for those schemes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "is_url",
    "join",
    "open_output",
    "open_input",
    "remove",
    "put",
    "get",
    "spare_memory",
]


def is_url(location: str | Path) -> bool:
    """True for ``scheme://...`` locations, which go through fsspec."""
    return "://" in str(location)


def join(base: str | Path, *parts: str) -> str:
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def _fs(url: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    return url_to_fs(url)


@contextmanager
def open_output(location: str) -> IO[bytes]:
    """A binary file to write at ``location`` (its folders are made)."""
    if is_url(location):
        fs, path = _fs(location)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as fh:
            yield fh
    else:  # Arrow's own file: its writers then write without going through Python
        import pyarrow as pa

        Path(location).parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(location, "wb") as fh:
            yield fh


@contextmanager
def open_input(location: str) -> Iterator[IO[bytes]]:
    """A binary file to read at ``location`` (seekable: fsspec reads ranges of remote files)."""
    if is_url(location):
        fs, path = _fs(location)
        with fs.open(path, "rb") as fh:
            yield fh
    else:
        with open(location, "rb") as fh:
            yield fh


def remove(location: str) -> None:
    """Remove a folder flanmix made (missing is fine)."""
    if is_url(location):
        fs, path = _fs(location)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    else:
        shutil.rmtree(location, ignore_errors=True)


def put(local: str | Path, location: str) -> None:
    """Copy a local file to ``location``."""
    if is_url(location):
        fs, path = _fs(location)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local), path)
    else:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, location)


def get(location: str, local: str | Path) -> str:
    """Copy ``location`` to a local file; returns its sha256."""
    h = hashlib.sha256()
    if is_url(location):
        fs, path = _fs(location)
        src = fs.open(path, "rb")
    else:
        src = open(location, "rb")  # noqa: SIM115 - closed below
    with src, open(local, "wb") as dst:
        while block := src.read(1 << 20):
            h.update(block)
            dst.write(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- memory-backed files

#: Where runs (and spilled source row groups) may be held in memory: a tmpfs that Linux mounts
#: on every machine.
FAST_ROOT = "/dev/shm"
#: A file goes to memory-backed storage only if the machine keeps this share of its memory
#: available beside it (and at least SPARE_MIN): files there are memory that nothing can reclaim
#: until they are removed.
SPARE_SHARE = 0.25
SPARE_MIN = 1 << 30


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none)."""
    out = {}
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                name, _, rest = line.partition(b":")
                out[name.decode()] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def spare_memory(nbytes: int, root: str = FAST_ROOT) -> bool:
    """Whether ``nbytes`` more of memory-backed files leave the machine :data:`SPARE_SHARE` of its
    memory available (at least :data:`SPARE_MIN`) and fit the tmpfs at ``root``."""
    info = meminfo()
    if "MemAvailable" not in info or "MemTotal" not in info:
        return False
    try:
        st = os.statvfs(root)
    except OSError:
        return False
    keep = max(SPARE_MIN, int(SPARE_SHARE * info["MemTotal"]))
    room = st.f_bavail * st.f_frsize
    return info["MemAvailable"] - nbytes >= keep and room - nbytes >= keep // 4
