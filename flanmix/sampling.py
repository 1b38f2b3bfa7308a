"""Seeded draws and the named formats they choose among: options styles and few-shot layouts.

Every random decision of the compiler is a *named draw* from a 64-bit base hash: the decision's
name is hashed once (:func:`flanmix.render.hash64`) and mixed with the base (:func:`flanmix.render.
mix64`), so each decision reads its own independent 64 bits. Adding, removing or reordering one
decision never shifts another, and no two decisions share bits (``sampling_version`` 1 read
overlapping bit fields of one hash, which biased the template choice when ``inverted`` was a
fraction).

Choices among *named* things (options headers and markers) use rendezvous hashing: every name gets
a score ``draw(base, "style:" + name)`` and the highest wins. A spec that lists one more name
changes only the rows the new name wins; a spec that lists the same names always gets the same
styles, whatever names the registry gains later.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .render import hash64

#: Written to the manifest. 1: bit fields of one hash per row (flanmix <= 0.1 before issue 11).
#: 2: independent named draws, rendezvous-hashed option styles, redrawn skips.
SAMPLING_VERSION = 2

_2_53 = float(1 << 53)
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # mix64's increment


@functools.lru_cache(maxsize=4096)
def _key(name: str) -> int:
    return hash64("flanmix-draw", name)


@functools.lru_cache(maxsize=4096)
def _offset(name: str) -> int:
    """What :func:`flanmix.render.mix64` adds to the base for the decision ``name`` (cached)."""
    return ((_key(name) + 1) * _GOLDEN) & _M64


def draw(base: int, name: str) -> int:
    """64 independent bits for the decision ``name`` of the example whose hash is ``base``:
    ``mix64(base, _key(name))``, written out (a compile makes millions of draws)."""
    z = (base + _offset(name)) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def uniform(base: int, name: str) -> float:
    """A number in [0, 1) for the decision ``name`` (53 bits)."""
    return (draw(base, name) >> 11) / _2_53


def index(base: int, name: str, n: int) -> int:
    """An index in [0, n) for the decision ``name`` (modulo bias below 2**-50 for n < 16384)."""
    return draw(base, name) % n


@functools.lru_cache(maxsize=1024)
def _pick_offsets(name: str, names: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
    return tuple((_offset(f"{name}:{n}"), n) for n in names)


def pick(base: int, name: str, names: Sequence[str]) -> str:
    """One of ``names`` by rendezvous hashing: stable when other names are added or removed.

    The highest ``(draw(base, name + ":" + n), n)`` wins; the draws are written out here."""
    best_z, best = -1, None
    for offset, n in _pick_offsets(name, tuple(names)):
        z = (base + offset) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        z ^= z >> 31
        if z > best_z or (z == best_z and n > best):
            best_z, best = z, n
    if best is None:
        raise ValueError("pick() of no names")
    return best


def _draws(z0: np.ndarray, offset: int) -> np.ndarray:
    """:func:`draw` of every base in ``z0`` (uint64) for the decision whose offset is given."""
    z = z0 + np.uint64(offset) if offset else z0
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mix64_many(base: int | np.ndarray, n: np.ndarray) -> np.ndarray:
    """:func:`flanmix.render.mix64` of ``base`` (one int, or a uint64 per ``n``) with every ``n``
    (non-negative ints) at once, as uint64: numpy's uint64 arithmetic wraps modulo 2**64 like
    mix64's masks, so the values are the same."""
    z0 = np.asarray(base, dtype=np.uint64) + (
        np.asarray(n).astype(np.uint64) + np.uint64(1)
    ) * np.uint64(_GOLDEN)
    return _draws(z0, 0)


def draw_many(bases: np.ndarray, name: str) -> np.ndarray:
    """:func:`draw` of every uint64 in ``bases`` for the decision ``name``."""
    return _draws(bases, _offset(name))


def uniform_many(bases: Sequence[int], name: str) -> list[float]:
    """:func:`uniform` for many bases at once, the same numbers (53-bit integers are exact in
    float64, and so is the division by 2**53)."""
    z0 = np.fromiter(bases, dtype=np.uint64, count=len(bases))
    return ((_draws(z0, _offset(name)) >> np.uint64(11)).astype(np.float64) / _2_53).tolist()


def pick_many(bases: Sequence[int], name: str, names: Sequence[str]) -> list[str]:
    """:func:`pick` for many bases at once, the same answers: the draws in numpy's uint64
    arithmetic (which wraps modulo 2**64 like the masks of :func:`draw`), ties to the larger name."""
    if not names:
        raise ValueError("pick() of no names")
    order = sorted(set(names))  # ascending: among equal draws the last (largest) name wins
    z0 = np.fromiter(bases, dtype=np.uint64, count=len(bases))
    scores = np.empty((len(order), len(z0)), dtype=np.uint64)
    for i, n in enumerate(order):
        scores[i] = _draws(z0, _offset(f"{name}:{n}"))
    last = len(order) - 1 - np.argmax(scores[::-1], axis=0)  # the largest name among the maxima
    return [order[i] for i in last.tolist()]


# ----------------------------------------------------------------------------- options styles

FLAN_HEADER = "OPTIONS:"
#: Header name -> the line above the options.
HEADERS = {
    "options_caps": "OPTIONS:",
    "options": "Options:",
    "choose": "Choose your answer from:",
    "pick_from": "Pick from:",
    "possible_answers": "Possible answers:",
    "available_choices": "Available choices:",
    "choices": "Choices:",
    "select": "Select from the following.",
    "answer_options": "Answer options:",
}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Marker:
    """How one option line is written, and how the target names the right option."""

    line: str  # format of one option line: {c} choice, {L} letter, {n} number
    target: str | None  # format of the target; None: the choice's own text


#: Marker name -> line and target formats. ``flan`` is FLAN's block: ``OPTIONS:`` and dashes,
#: whatever headers a spec lists.
MARKERS = {
    "flan": Marker("- {c}", None),
    "dash": Marker("- {c}", None),
    "letter_paren": Marker("({L}) {c}", "({L})"),
    "letter_dot": Marker("{L}. {c}", "{L}"),
    "number_dot": Marker("{n}. {c}", "{n}"),
    "number_paren": Marker("{n}) {c}", "{n}"),
}
#: ``options_style: varied`` as it was when the names were introduced (frozen: never extend these
#: two tuples; a spec that wants a new style lists it in ``options_styles``).
VARIED_MARKERS = ("dash", "letter_paren", "letter_dot", "number_dot", "number_paren")
VARIED_HEADERS = tuple(HEADERS)


def options_block(
    choices: tuple[str, ...], style: tuple[str, str] | None
) -> tuple[str, tuple[str, ...]]:
    """The text appended to the input, and the options as the target must name them.

    ``style`` is (header name, marker name); None (or marker ``flan``) is FLAN's ``OPTIONS:`` and a
    dashed list, the target unchanged.
    """
    if style is None or style[1] == "flan":
        return "\n\n" + FLAN_HEADER + "\n" + "\n".join("- " + c for c in choices), choices
    header, marker = HEADERS[style[0]], MARKERS[style[1]]
    lines, labels = [], []
    for i, c in enumerate(choices):
        letter = LETTERS[i] if i < len(LETTERS) else str(i + 1)
        lines.append(marker.line.format(c=c, L=letter, n=i + 1))
        labels.append(c if marker.target is None else marker.target.format(L=letter, n=i + 1))
    return "\n\n" + header + "\n" + "\n".join(lines), tuple(labels)


# ----------------------------------------------------------------------------- few-shot layouts


@dataclass(frozen=True)
class FewShotFormat:
    """How exemplars and the query are joined into one input.

    The input is ``prefix_x + x + xy + prefix_y + y + sep`` for every exemplar, then
    ``prefix_x + query + xy + prefix_y``, right-stripped, then ``suffix``.
    """

    prefix_x: str
    xy: str
    prefix_y: str
    sep: str
    suffix: str
    note: str

    def exemplar(self, x: str, y: str) -> str:
        return self.prefix_x + x + self.xy + self.prefix_y + y + self.sep

    def query(self, x: str) -> str:
        return (self.prefix_x + x + self.xy + self.prefix_y).rstrip() + self.suffix


FEW_SHOT_FORMATS = {
    # flanmix's own layout (sampling_version 1): input, newline, target, blank line.
    "flanmix": FewShotFormat("", "\n", "", "\n\n", "", "x, newline, y, blank line"),
    # FLAN 2021 (flan/few_shot.py): speaker turns "0 " and "1 ", " X " between x and y and between
    # exemplars, " FLAN" at the end.
    "flan2021": FewShotFormat("0 ", " X ", "1 ", " X ", " FLAN", "0 x X 1 y X ... 0 q X 1 FLAN"),
    # FLAN v2 / Flan Collection (flan/v2/few_shot.py defaults): a blank line between x and y, two
    # blank lines between exemplars.
    "flan_v2": FewShotFormat("", "\n\n", "", "\n\n\n", "", "x, blank line, y, two blank lines"),
}
