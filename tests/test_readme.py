"""Every README command runs as written.

A fenced ``bash``, ``python`` or ``text`` block of README.md is run when the line right above its
fence is a marker:

- ``<!-- runnable -->``: run it in the default test run;
- ``<!-- runnable: slow -->``: run it only with the slow tests (``pytest -m slow``, CI);
- ``<!-- not runnable: REASON -->``: say why it is not run (every ``bash`` and ``python`` block
  needs one of the three, so a new example cannot silently escape the test).

How a block runs: in a scratch copy of the checkout (tracked and untracked, not ignored, files;
``.venv`` links to this venv, as after ``make install``), offline (``HF_HUB_OFFLINE=1``,
``HF_DATASETS_OFFLINE=1``), with this venv's ``bin`` first on ``PATH``:

- ``bash``: ``bash -euo pipefail``; it must exit 0;
- ``python``: a doctest when it holds ``>>>`` prompts (output compared, ``...`` matches
  anything), else a script that must exit 0;
- ``text``: a terminal transcript. Each ``$ COMMAND`` line runs; the lines shown below it must
  appear in the command's output in the same order (lines may be left out in between; a ``...``
  line stands for any lines, ``...`` inside a line for any text; durations such as ``1.3s`` match any duration; runs of spaces and
  tabs compare equal).

Blocks of one ``##`` section share one scratch copy and run in README order (the compile block
makes the mixture the next blocks read). A block whose earlier blocks have not run yet (``-k``,
``-m "not slow"``) runs them first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import REPO

README = REPO / "README.md"
MARKER = re.compile(r"^<!--\s*(runnable(?::\s*(slow))?|not runnable:\s*(.+?))\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
DURATION = re.compile(r"\b\d+(?:\.\d+)?\s?(?:s|ms|min)\b")
TIMEOUT = 900


@dataclass
class Block:
    section: str
    index: int  # position among the section's runnable blocks
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    slow: bool
    earlier: list[Block] = field(default_factory=list, repr=False)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"{slug}-{self.index}-{self.lang}-L{self.line}"


def parse_readme(text: str) -> tuple[list[Block], list[str]]:
    """The runnable blocks, and problems: bash/python blocks without a marker, stray markers."""
    lines = text.split("\n")
    blocks: list[Block] = []
    problems: list[str] = []
    section = "top"
    by_section: dict[str, list[Block]] = {}
    i = 0
    pending: re.Match | None = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        marker = MARKER.match(line)
        if marker:
            if not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                problems.append(f"README.md:{i + 1}: marker not followed by a ``` fence")
            pending = marker
            i += 1
            continue
        fence = FENCE.match(line)
        if fence:
            lang, start = fence.group(1), i
            j = i + 1
            while j < len(lines) and lines[j].rstrip() != "```":
                j += 1
            code = "\n".join(lines[i + 1 : j]) + "\n"
            if pending is not None and pending.group(1).startswith("runnable"):
                if lang not in ("bash", "python", "text"):
                    problems.append(f"README.md:{start + 1}: cannot run a ```{lang} block")
                else:
                    earlier = list(by_section.get(section, []))
                    block = Block(
                        section,
                        len(earlier),
                        lang,
                        code,
                        start + 1,
                        slow=bool(pending.group(2)),
                        earlier=earlier,
                    )
                    by_section.setdefault(section, []).append(block)
                    blocks.append(block)
            elif pending is None and lang in ("bash", "python"):
                problems.append(
                    f"README.md:{start + 1}: ```{lang} block has no <!-- runnable --> or "
                    "<!-- not runnable: why --> marker"
                )
            pending = None
            i = j + 1
            continue
        if line.strip():
            pending = None
        i += 1
    return blocks, problems


BLOCKS, PROBLEMS = parse_readme(README.read_text(encoding="utf-8"))


def test_readme_markers():
    assert PROBLEMS == []
    assert BLOCKS, "no runnable block in README.md"


# ----------------------------------------------------------------------------- running


def _scratch_copy(dest: Path) -> Path:
    """The checkout's files (tracked, and untracked but not ignored) copied into ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    (dest / ".venv").symlink_to(Path(sys.prefix))  # as after `make install`: .venv/bin/flanmix
    return dest


def _env(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_DATASETS_CACHE=str(scratch / ".hf_datasets_cache"),
        MPLBACKEND="Agg",
        COLUMNS="200",
    )
    return env


def _run(cmd: list[str], scratch: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd,
        cwd=scratch,
        env=_env(scratch),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _normalize(line: str) -> str:
    return " ".join(DURATION.sub("<T>", line).split())


def transcript_mismatch(expected: list[str], output: str) -> str | None:
    """None when the ``expected`` lines appear in ``output`` in order, else what is missing."""
    got = [_normalize(line) for line in output.split("\n")]
    pos = 0
    for want in expected:
        if want.strip() in ("", "..."):
            continue
        norm = _normalize(want)
        pattern = (
            re.compile(".*".join(map(re.escape, norm.split("...")))) if "..." in norm else None
        )
        for i in range(pos, len(got)):
            if pattern.fullmatch(got[i]) if pattern else got[i] == norm:
                pos = i + 1
                break
        else:
            return f"line not found (in order) in the output: {want!r}"
    return None


def run_block(block: Block, scratch: Path) -> None:
    where = f"README.md:{block.line} ({block.section})"
    if block.lang == "bash":
        r = _run(["bash", "-euo", "pipefail", "-s"], scratch, stdin=block.code)
        assert r.returncode == 0, (
            f"{where} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    elif block.lang == "python" and ">>>" in block.code:
        runner = (
            "import doctest, sys\n"
            "src = sys.stdin.read()\n"
            "test = doctest.DocTestParser().get_doctest(src, {}, 'README', 'README.md', 0)\n"
            "flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE\n"
            "r = doctest.DocTestRunner(optionflags=flags).run(test)\n"
            "sys.exit(1 if r.failed else 0)\n"
        )
        r = _run([sys.executable, "-c", runner], scratch, stdin=block.code)
        assert r.returncode == 0, f"{where} doctest failed\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    elif block.lang == "python":
        r = _run([sys.executable, "-"], scratch, stdin=block.code)
        assert r.returncode == 0, (
            f"{where} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    else:  # text: a transcript of $ commands and their output
        commands: list[tuple[str, list[str]]] = []
        for line in block.code.rstrip("\n").split("\n"):
            if line.startswith("$ "):
                commands.append((line[2:], []))
            elif commands:
                commands[-1][1].append(line)
        assert commands, f"{where}: a runnable text block needs '$ command' lines"
        for command, expected in commands:
            r = _run(["bash", "-o", "pipefail", "-c", command], scratch)
            problem = transcript_mismatch(expected, r.stdout + r.stderr)
            assert problem is None, (
                f"{where}: $ {command}\n{problem}\n--- output (exit {r.returncode}):\n"
                f"{(r.stdout + r.stderr)[-4000:]}"
            )


_SCRATCH: dict[str, Path] = {}
_DONE: set[str] = set()
_FAILED: set[str] = set()


@pytest.fixture
def scratch_for(tmp_path_factory):
    def get(section: str) -> Path:
        if section not in _SCRATCH:
            _SCRATCH[section] = _scratch_copy(tmp_path_factory.mktemp("readme"))
        return _SCRATCH[section]

    return get


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.slow else []) for b in BLOCKS],
)
def test_readme_block_runs(block: Block, scratch_for):
    scratch = scratch_for(block.section)
    for before in [*block.earlier, block]:  # earlier blocks make what this one reads
        if before.id in _FAILED:
            pytest.fail(f"needs README.md:{before.line}, which failed")
        if before.id not in _DONE:
            try:
                run_block(before, scratch)
            except BaseException:
                _FAILED.add(before.id)
                raise
            _DONE.add(before.id)


def test_transcript_matching():
    out = "a\nwrote out/x in 1.3s\nb\nc\n"
    assert transcript_mismatch(["a", "...", "wrote out/x in 2.0s", "c"], out) is None
    assert transcript_mismatch(["c", "a"], out) is not None
    assert transcript_mismatch(["wrote ... in 9s"], out) is None
    assert transcript_mismatch(["wrote ... in 9s x"], out) is not None
    blocks, problems = parse_readme(
        "## S\n<!-- runnable -->\n```bash\necho hi\n```\n\n```python\nx = 1\n```\n"
        "<!-- not runnable: needs a GPU -->\n```bash\nnvidia-smi\n```\n<!-- runnable -->\ntext\n"
    )
    assert [b.code for b in blocks] == ["echo hi\n"]
    assert len(problems) == 2 and "no <!-- runnable -->" in problems[0] and "fence" in problems[1]
