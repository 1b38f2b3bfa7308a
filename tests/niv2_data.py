"""NIv2-shaped task files written by hand for the tests (flanmix's own text, not NIv2's).

``write_tree(root)`` writes ``root/tasks/*.json`` and ``root/splits/default/*.txt`` shaped like a
clone of github.com/allenai/natural-instructions: current-release files (Definition as a list,
instance ids, language keys), an older-release file (Definition as a string, no ids, no language
keys, ``"URL": [NaN]``), multi-output instances, a German task, an MMLU-range task, and one task
for each of the twelve categories of NIv2's default test split. tests/fixtures/niv2 is this
tree, committed for the README (``python -m tests.niv2_data tests/fixtures/niv2`` rewrites it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EN = ["English"]


def task(
    definition,
    categories,
    pos,
    instances,
    *,
    neg=(),
    lang=EN,
    out_lang=None,
    ids=True,
    old=False,
    source="flanmix fixture",
):
    doc = {
        "Contributors": ["flanmix tests"],
        "Source": [source],
        "URL": ["https://example.org/fixture"],
        "Categories": categories,
        "Reasoning": [],
        "Definition": definition if old else [definition],
        "Input_language": lang,
        "Output_language": out_lang or lang,
        "Instruction_language": EN,
        "Domains": ["Fiction"],
        "Positive Examples": [{"input": i, "output": o, "explanation": e} for i, o, e in pos],
        "Negative Examples": [{"input": i, "output": o, "explanation": e} for i, o, e in neg],
        "Instances": [],
        "Instance License": ["CC BY 4.0"],
    }
    for n, (inp, outs) in enumerate(instances):
        inst = {"input": inp, "output": outs if isinstance(outs, list) else [outs]}
        doc["Instances"].append({"id": f"{{name}}-{n:04d}", **inst} if ids else inst)
    if old:
        for key in ("Input_language", "Output_language", "Instruction_language"):
            del doc[key]
        doc["URL"] = [float("nan")]
    return doc


SENTENCES = [
    ("The kettle clicked off as the water reached a boil.", "kettle"),
    ("Mara folded the map twice before putting it in her coat.", "map"),
    ("A gust of wind carried the paper lantern over the river.", "lantern"),
    ("The baker left the bread to cool on the window sill.", "bread"),
    ("Two children raced their bicycles down the empty lane.", "bicycles"),
    ("The museum guard switched off the lights at six.", "lights"),
]

TRAIN = {
    "task001_fixture_question_generation": task(
        "You get a short sentence. Write one question whose answer is a thing named in it.",
        ["Question Generation"],
        [
            (
                "Sentence: The cat slept on the warm stove.",
                "Where did the cat sleep?",
                "The stove is named in the sentence and answers the question.",
            )
        ],
        [(f"Sentence: {s}", f"What is this sentence about? ({w})") for s, w in SENTENCES],
        neg=[
            (
                "Sentence: The cat slept on the warm stove.",
                "Is it raining?",
                "The sentence cannot answer it.",
            )
        ],
    ),
    "task020_fixture_answer_generation": task(
        "Answer the question about the sentence with a short phrase taken from it. Several phrases may be right.",
        ["Answer Generation", "Question Answering"],
        [
            (
                "Sentence: Tom lent Ana his umbrella. Question: Who got the umbrella?",
                "Ana",
                "Ana is the one Tom lent it to.",
            ),
            (
                "Sentence: The shop opens at nine. Question: When does the shop open?",
                "at nine",
                "The time is stated.",
            ),
        ],
        [
            (f"Sentence: {s} Question: What is mentioned?", [w, f"the {w}", f"a {w}"])
            for s, w in SENTENCES
        ],
    ),
    "task050_fixture_sentiment_old_format": task(
        "Decide whether the review is positive or negative. Answer POS or NEG.",
        ["Sentiment Analysis"],
        [("Loved every minute of it.", "POS", "The reviewer enjoyed it.")],
        [
            ("The soup was cold and the waiter rude.", "NEG"),
            ("A wonderful little bookshop.", "POS"),
            ("I would not go back.", "NEG"),
            ("Great coffee, friendly staff.", "POS"),
            ("The battery died after a day.", "NEG"),
            ("Exactly what I hoped for.", "POS"),
        ],
        ids=False,
        old=True,
    ),
    "task120_fixture_summarization": task(
        "Summarize the short story in one sentence.",
        ["Summarization"],
        [
            (
                "Lena missed the bus, walked in the rain, and arrived late but smiling.",
                "Lena arrived late after walking in the rain.",
                "It keeps the main events.",
            )
        ],
        [
            (f"{s} Nobody noticed until morning.", f"Something happened with the {w}.")
            for s, w in SENTENCES
        ],
    ),
}

SKIPPED = {
    "task100_fixture_translation_en_de": task(
        "Translate the English sentence into German.",
        ["Translation"],
        [("Good morning.", "Guten Morgen.", "A greeting.")],
        [
            ("Thank you.", "Danke."),
            ("Good night.", "Gute Nacht."),
            ("Yes.", "Ja."),
            ("No.", "Nein."),
            ("Please.", "Bitte."),
        ],
        lang=EN,
        out_lang=["German"],
    ),
    "task690_fixture_mmmlu_answer_generation": task(
        "Pick the right option for the exam question.",
        ["Question Answering"],
        [("2 + 2 = ? (A) 3 (B) 4", "B", "Four.")],
        [("3 + 3 = ? (A) 6 (B) 7", "A")] * 5,
    ),
}

TEST_CATEGORIES = [
    (
        "Textual Entailment",
        "Does the first sentence imply the second? Answer yes or no.",
        lambda s, w: (f"{s} / Something is mentioned.", "yes"),
    ),
    (
        "Cause Effect Classification",
        "Is the second event a cause or an effect of the first? Answer cause or effect.",
        lambda s, w: (f"{s} / Someone noticed the {w}.", "effect"),
    ),
    (
        "Coreference Resolution",
        "Name the thing the word 'it' refers to.",
        lambda s, w: (f"{s} Later it was gone.", w),
    ),
    (
        "Dialogue Act Recognition",
        "Label the turn as question, statement or request.",
        lambda s, w: (f"Speaker: Could you look at the {w}?", "request"),
    ),
    (
        "Answerability Classification",
        "Can the question be answered from the sentence? Answer yes or no.",
        lambda s, w: (f"{s} Question: What colour was it?", "no"),
    ),
    (
        "Word Analogy",
        "Complete the analogy with one word.",
        lambda s, w: (f"sun : day :: moon : ? (context word {w})", "night"),
    ),
    (
        "Overlap Extraction",
        "Write a word that both sentences share.",
        lambda s, w: (f"{s} / I saw the {w} too.", w),
    ),
    ("Keyword Tagging", "Give the main keyword of the sentence.", lambda s, w: (s, w)),
    (
        "Question Rewriting",
        "Rewrite the question so it names its topic explicitly.",
        lambda s, w: (f"Context: {s} Question: Where was it?", f"Where was the {w}?"),
    ),
    (
        "Title Generation",
        "Write a short title for the sentence.",
        lambda s, w: (s, [f"The {w.title()}", f"A {w.title()}"]),
    ),
    (
        "Data to Text",
        "Write a sentence from the triple.",
        lambda s, w: (f"[{w}, seen in, the story]", f"The {w} is seen in the story."),
    ),
    (
        "Grammar Error Correction",
        "Fix the grammar of the sentence.",
        lambda s, w: (f"the {w} were here yesterday", f"The {w} was here yesterday."),
    ),
]


def tree() -> dict[str, dict]:
    tasks = dict(TRAIN) | dict(SKIPPED)
    for n, (cat, definition, make) in enumerate(TEST_CATEGORIES):
        slug = cat.lower().replace(" ", "_")
        name = f"task{300 + n}_fixture_{slug}"
        pos_in, pos_out = make("The clock stopped at noon.", "clock")
        tasks[name] = task(
            definition,
            [cat],
            [(pos_in, pos_out, "This is how the instructions apply to it.")],
            [make(s, w) for s, w in SENTENCES],
        )
    for name, doc in tasks.items():
        for inst in doc["Instances"]:
            if "id" in inst:
                inst["id"] = inst["id"].replace("{name}", name)
    return tasks


def write_tree(root: str | Path) -> Path:
    root = Path(root)
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "default").mkdir(parents=True, exist_ok=True)
    tasks = tree()
    for name, doc in tasks.items():
        text = json.dumps(
            doc, indent=4, ensure_ascii=False
        )  # NaN written as NaN, like the old files
        (root / "tasks" / f"{name}.json").write_text(text + "\n", encoding="utf-8")
    test = sorted(n for n in tasks if n.startswith("task3"))
    (root / "splits" / "default" / "train_tasks.txt").write_text("\n".join(sorted(TRAIN)) + "\n")
    (root / "splits" / "default" / "test_tasks.txt").write_text("\n".join(test) + "\n")
    (root / "splits" / "default" / "excluded_tasks.txt").write_text(
        "task100_fixture_translation_en_de\n"
    )
    return root


if __name__ == "__main__":
    write_tree(sys.argv[1])
