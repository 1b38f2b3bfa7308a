"""``python tests/stalled_compile.py STAGE MARKER ARGS...``: ``flanmix ARGS...`` with the compile
stopped dead at STAGE, for the kill tests. At that point the marker file is touched and the process
sleeps, so a test can kill it exactly there instead of guessing with timers. The stages:

- ``pieces``: every unit rendered (the workers alive), no shard written yet;
- ``shards``: every shard written and hashed, no manifest yet;
- ``publish``: the manifest written in the staging folder, not yet renamed to OUT.

The library has no hook for this: the stall replaces the function the compile calls next.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import flanmix.compile
import flanmix.publish
from flanmix.cli import main

NEXT_CALL = {
    "pieces": (flanmix.compile, "_stats_from"),
    "shards": (flanmix.compile, "_manifest"),
    "publish": (flanmix.publish, "publish_dir"),
}

if __name__ == "__main__":
    stage, marker, *args = sys.argv[1:]

    def stall(*_args, **_kwargs):
        Path(marker).touch()
        time.sleep(3600)

    setattr(*NEXT_CALL[stage], stall)
    sys.exit(main(args))
