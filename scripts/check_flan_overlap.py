"""Report flanmix templates that repeat FLAN 2021's (or promptsource's) wording.

    python scripts/check_flan_overlap.py FLAN_TEMPLATES_PY [--library task_templates]
        [--words 8] [--any-task] [--promptsource [DIR]]

FLAN_TEMPLATES_PY is FLAN's ``flan/templates.py`` (github.com/google-research/FLAN), kept out of
this repository. Its ``PATTERNS`` dict is read with ``ast.literal_eval``; none of FLAN's code runs.

A template "repeats" another when they share a run of at least ``--words`` words (default 8) in
the same part (input or target). Words are compared lower-cased with punctuation and apostrophes
dropped; placeholders (FLAN's ``{premise}``, Jinja's ``{{ ... }}``, ``{% ... %}``, ``{# ... #}``)
are left out and the words on either side of one count as adjacent, so "Premise: {premise}
Hypothesis: {hypothesis} Does the premise ..." is the word run "premise hypothesis does the
premise ...".

By default each flanmix task is compared with FLAN's templates for the same task (the table
``FLAN_TASK`` maps flanmix ids to FLAN's ``PATTERNS`` keys); ``--any-task`` compares with all of
FLAN's templates. ``--promptsource`` adds promptsource's templates (default: the installed
package's ``templates/`` folder), per task through ``PROMPTSOURCE_DATASETS`` or, with
``--any-task``, all of them. Exit status: 0 when nothing is shared, 1 when something is, 2 on bad
input.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path

DEFAULT_WORDS = 8

# flanmix task id -> FLAN PATTERNS key, where they differ (FLAN's utils.t_name_to_flan_pattern_name
# plus FLAN's own dataset names). Every other flanmix id is its own FLAN key.
FLAN_TASK = {
    "anli_r1": "anli",
    "anli_r2": "anli",
    "anli_r3": "anli",
    "mnli_matched": "mnli",
    "mnli_mismatched": "mnli",
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "para_crawl_enes": "para_crawl",
    "wmt16_csen": "wmt16_translate",
    "wmt16_deen": "wmt16_translate",
    "wmt16_fien": "wmt16_translate",
    "wmt16_roen": "wmt16_translate",
    "wmt16_ruen": "wmt16_translate",
    "wmt16_tren": "wmt16_translate",
    "ag_news": "ag_news_subset",
    "imdb": "imdb_reviews",
    "yelp_polarity": "yelp_polarity_reviews",
    "mrpc": "glue_mrpc",
    "qqp": "glue_qqp",
    "web_nlg": "web_nlg_en",
    "wiki_lingua_en": "wiki_lingua_english_en",
}

# flanmix task id -> promptsource dataset folders (relative to promptsource's templates/).
PROMPTSOURCE_DATASETS = {
    "anli_r1": ["anli"],
    "anli_r2": ["anli"],
    "anli_r3": ["anli"],
    "cb": ["super_glue/cb"],
    "mnli_matched": ["glue/mnli", "glue/mnli_matched"],
    "mnli_mismatched": ["glue/mnli", "glue/mnli_mismatched"],
    "qnli": ["glue/qnli"],
    "rte": ["glue/rte", "super_glue/rte"],
    "snli": ["snli"],
    "wnli": ["glue/wnli"],
    "copa": ["super_glue/copa"],
    "hellaswag": ["hellaswag"],
    "piqa": ["piqa"],
    "story_cloze": ["story_cloze/2016"],
    "imdb": ["imdb"],
    "sst2": ["glue/sst2"],
    "yelp_polarity": ["yelp_polarity"],
    "mrpc": ["glue/mrpc"],
    "qqp": ["glue/qqp", "quora"],
    "paws_wiki": ["paws/labeled_final"],
    "stsb": ["glue/stsb"],
    "arc_easy": ["ai2_arc/ARC-Easy"],
    "arc_challenge": ["ai2_arc/ARC-Challenge"],
    "natural_questions": ["nq_open"],
    "trivia_qa": ["trivia_qa/unfiltered"],
    "common_gen": ["common_gen"],
    "e2e_nlg": ["e2e_nlg_cleaned"],
    "bool_q": ["super_glue/boolq"],
    "drop": ["drop"],
    "multirc": ["super_glue/multirc"],
    "openbookqa": ["openbookqa/main"],
    "squad_v1": ["squad"],
    "squad_v2": ["squad_v2"],
    "cosmos_qa": ["cosmos_qa"],
    "record": ["super_glue/record"],
    "winogrande": ["winogrande/winogrande_xl"],
    "wsc": ["super_glue/wsc.fixed"],
    "wsc273": ["winograd_wsc/wsc273"],
    "coqa": ["coqa"],
    "quac": ["quac"],
    "trec": ["trec"],
    "cola": ["glue/cola"],
    "wic": ["super_glue/wic"],
    "math_dataset": ["math_dataset/algebra__linear_1d"],
    "aeslc": ["aeslc"],
    "ag_news": ["ag_news"],
    "cnn_dailymail": ["cnn_dailymail/3.0.0"],
    "gigaword": ["gigaword"],
    "multi_news": ["multi_news"],
    "samsum": ["samsum"],
    "xsum": ["xsum"],
    "opinion_abstracts_rotten_tomatoes": ["rotten_tomatoes"],
}

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_FLAN_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_APOSTROPHE = re.compile(r"['\u2019]")
_WORD = re.compile(r"[^\W_]+")


def words(text: str, *, jinja: bool = True) -> list[str]:
    """The literal words of a template part: placeholders dropped, lower-cased, no punctuation."""
    text = _JINJA.sub(" ", text) if jinja else _FLAN_PLACEHOLDER.sub(" ", text)
    return _WORD.findall(_APOSTROPHE.sub("", text.lower()))


@dataclass(frozen=True)
class Reference:
    """One template part of the corpus compared against (FLAN's or promptsource's)."""

    origin: str  # e.g. "FLAN mnli[0] input" or "promptsource glue/rte 'does it follow that'"
    task: str  # FLAN key or promptsource dataset
    words: tuple[str, ...]


@dataclass(frozen=True)
class Overlap:
    file: str
    line: int
    task: str
    template: str
    part: str
    reference: str
    shared: tuple[str, ...]

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.task}.{self.template} ({self.part}) shares "
            f'{len(self.shared)} words with {self.reference}: "{" ".join(self.shared)}"'
        )


def read_flan_patterns(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """FLAN's ``PATTERNS`` as data: {task: [(inputs_pattern, targets_pattern), ...]}."""
    source = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "PATTERNS" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            patterns = ast.literal_eval(node.value)
            return {str(k): [(str(i), str(t)) for i, t in v] for k, v in patterns.items()}
    raise ValueError(f"{path}: no 'PATTERNS = {{...}}' dict literal at top level")


def flan_references(patterns: dict[str, list[tuple[str, str]]]) -> list[Reference]:
    refs = []
    for task, pairs in patterns.items():
        for i, (inp, tgt) in enumerate(pairs):
            for part, text in (("input", inp), ("target", tgt)):
                refs.append(
                    Reference(f"FLAN {task}[{i}] {part}", task, tuple(words(text, jinja=False)))
                )
    return refs


def promptsource_references(root: str | Path) -> list[Reference]:
    from flanmix.promptsource import find_templates_files, read_templates_file

    root = Path(root)
    refs = []
    for path in find_templates_files(root):
        psfile = read_templates_file(path)
        dataset = psfile.name
        for t in psfile.templates:
            for part, text in zip(("input", "target"), t.jinja.split("|||"), strict=False):
                refs.append(
                    Reference(
                        f"promptsource {dataset} {t.name!r} {part}", dataset, tuple(words(text))
                    )
                )
    return refs


class Index:
    """Word n-grams of the reference parts, for fast look-up of shared runs."""

    def __init__(self, refs: list[Reference], n: int):
        self.n = n
        self.grams: dict[tuple[str, ...], list[int]] = defaultdict(list)
        self.refs = refs
        for r, ref in enumerate(refs):
            for g in {ref.words[i : i + n] for i in range(len(ref.words) - n + 1)}:
                self.grams[g].append(r)

    def matches(
        self, text: list[str], allowed: set[str] | None
    ) -> list[tuple[Reference, tuple[str, ...]]]:
        """(reference, longest shared run) for each reference sharing >= n words with ``text``."""
        hits: set[int] = set()
        for i in range(len(text) - self.n + 1):
            hits.update(self.grams.get(tuple(text[i : i + self.n]), ()))
        out = []
        for r in sorted(hits):
            ref = self.refs[r]
            if allowed is not None and ref.task not in allowed:
                continue
            m = SequenceMatcher(None, text, ref.words, autojunk=False).find_longest_match(
                0, len(text), 0, len(ref.words)
            )
            out.append((ref, tuple(text[m.a : m.a + m.size])))
        return out


def flan_key(task_id: str) -> str:
    return FLAN_TASK.get(task_id, task_id)


def check_library(
    library: str | Path,
    flan: list[Reference] | None,
    promptsource: list[Reference] | None = None,
    *,
    n: int = DEFAULT_WORDS,
    any_task: bool = False,
) -> tuple[list[Overlap], list[str]]:
    """Overlaps found in the task files under ``library``, and the task ids with no counterpart."""
    from flanmix.catalog import iter_task_paths, read_task_file

    indexes = []
    if flan is not None:
        indexes.append((Index(flan, n), lambda tid: {flan_key(tid)}))
    if promptsource is not None:
        indexes.append(
            (Index(promptsource, n), lambda tid: set(PROMPTSOURCE_DATASETS.get(tid, ())))
        )
    flan_tasks = {r.task for r in flan or ()}
    overlaps, unmatched = [], []
    for path in iter_task_paths([library]):
        tf = read_task_file(path)
        task = tf.task
        if flan is not None and flan_key(task.id) not in flan_tasks:
            unmatched.append(task.id)
        for index, template in enumerate(task.templates):
            for part in ("input", "target"):
                text = words(getattr(template, part))
                for idx, allowed in indexes:
                    for ref, shared in idx.matches(text, None if any_task else allowed(task.id)):
                        overlaps.append(
                            Overlap(
                                tf.lines.file,
                                tf.lines.line(("templates", index, "id")),
                                task.id,
                                template.id,
                                part,
                                ref.origin,
                                shared,
                            )
                        )
    return overlaps, unmatched


def _installed_promptsource() -> Path:
    try:
        import promptsource
    except ImportError:
        sys.exit("promptsource is not installed: pass --promptsource DIR (its templates/ folder)")
    return Path(promptsource.__file__).parent / "templates"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("flan_templates", help="FLAN's flan/templates.py (kept out of this repo)")
    parser.add_argument("--library", default="task_templates", help="task files or folder")
    parser.add_argument(
        "--words", type=int, default=DEFAULT_WORDS, help="shortest shared run reported"
    )
    parser.add_argument(
        "--any-task",
        action="store_true",
        help="compare with every task's templates, not only the same task's",
    )
    parser.add_argument(
        "--promptsource",
        nargs="?",
        const="",
        metavar="DIR",
        help="also compare with promptsource's templates (default DIR: the installed package's)",
    )
    args = parser.parse_args(argv)
    if args.words < 1:
        parser.error("--words must be at least 1")
    try:
        flan = flan_references(read_flan_patterns(args.flan_templates))
    except (OSError, SyntaxError, ValueError) as exc:
        print(f"error: cannot read FLAN's templates: {exc}", file=sys.stderr)
        return 2
    ps = None
    if args.promptsource is not None:
        ps = promptsource_references(args.promptsource or _installed_promptsource())
    from flanmix.errors import FlanmixError

    try:
        overlaps, unmatched = check_library(
            args.library, flan, ps, n=args.words, any_task=args.any_task
        )
    except FlanmixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for o in overlaps:
        print(o)
    for tid in unmatched:
        print(f"note: task {tid} has no FLAN counterpart (add it to FLAN_TASK if it has one)")
    templates = {(o.task, o.template) for o in overlaps}
    against = "FLAN" + (" and promptsource" if ps is not None else "")
    scope = "any task" if args.any_task else "the same task"
    print(
        f"{len(templates)} templates share a run of >= {args.words} words with {against} "
        f"templates of {scope} ({len(overlaps)} pairs)"
    )
    return 1 if overlaps else 0


if __name__ == "__main__":
    sys.exit(main())
