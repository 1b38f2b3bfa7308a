"""The golden compile: a small checked-in spec whose output bytes are a test fixture.

``tests/fixtures/golden/spec.yaml`` is compiled offline over the fixture library next to it. The
shards' sha256s, a digest of every row and the first rows of each split must equal
``tests/fixtures/golden/expected.json``. Any change of compiled output is then deliberate and shows
up in review as a diff of that file.

After a deliberate change of output bytes, regenerate the fixture with the explicit flag::

    .venv/bin/python -m pytest tests/test_golden.py --update-golden

and say so in the commit message. Shard files embed the writer's version (parquet ``created_by``),
so the file hashes are compared only under the pyarrow version that wrote the fixture; the row
digest and first rows are compared always.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from flanmix.mixture import Mixture
from flanmix.write import compile_mixture

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
SPEC = GOLDEN / "spec.yaml"
EXPECTED = GOLDEN / "expected.json"
FIRST_ROWS = 5


def _digest(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def golden_snapshot(out: Path) -> dict:
    """What the fixture holds about a compiled mixture: hashes, counts, first rows."""
    manifest = compile_mixture(SPEC, out, workers=1, offline=True)
    mix = Mixture.open(out)
    snap: dict = {"pyarrow": pa.__version__, "splits": {}}
    for split, info in sorted(manifest["splits"].items()):
        rows = list(mix.iter_rows(split))
        snap["splits"][split] = {
            "rows": info["rows"],
            "shards": {s["file"]: s["sha256"] for s in info["shards"]},
            "rows_sha256": _digest(rows),
            "first_rows": rows[:FIRST_ROWS],
        }
    snap["counts"] = manifest["counts"]
    return snap


def test_golden_compile(tmp_path, request):
    got = golden_snapshot(tmp_path / "out")
    if request.config.getoption("--update-golden"):
        EXPECTED.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        pytest.skip(f"rewrote {EXPECTED.relative_to(GOLDEN.parent.parent.parent)}")
    assert EXPECTED.is_file(), "no golden fixture: run pytest tests/test_golden.py --update-golden"
    want = json.loads(EXPECTED.read_text(encoding="utf-8"))
    hint = "output bytes changed; if deliberate: pytest tests/test_golden.py --update-golden"
    assert got["counts"] == want["counts"], hint
    for split, w in want["splits"].items():
        g = got["splits"][split]
        assert g["rows"] == w["rows"], hint
        assert g["first_rows"] == w["first_rows"], hint
        assert g["rows_sha256"] == w["rows_sha256"], hint
        if got["pyarrow"] == want["pyarrow"]:
            assert g["shards"] == w["shards"], hint
    assert set(got["splits"]) == set(want["splits"]), hint
