"""Metrics for the lm-evaluation-harness tasks that ``flanmix export --format lm-eval`` writes.

This file is copied as ``utils.py`` next to the exported task YAMLs, which name its functions with
``!function utils.<name>``; it imports nothing from flanmix (only what lm-eval itself depends on), so
an export runs wherever ``lm_eval`` is installed.

Every metric is on a 0-100 scale, like flanmix's own ``results.json``, and is computed per template
and then averaged over the templates of the task (FLAN's task score: each template counts once, not
each row), so per-row values are ``(template_id, value)`` pairs and the aggregations below group them.

- options rows: ``acc`` (argmax of the summed log-likelihood) and ``acc_norm`` (argmax of the
  log-likelihood divided by the option's length in characters, the harness's definition);
- generation rows: ``exact_match`` and ``f1`` with SQuAD normalization, each the best over the row's
  ``references``; ``rouge1``/``rouge2``/``rougeL`` F-measures (stemmed) and corpus ``bleu``
  (sacreBLEU) against the first reference (the target) when the task lists them. These are
  ``flanmix evaluate``'s definitions (``flanmix.evaluate``);
- chain-of-thought rows (``doc["cot"]``): ``exact_match`` and ``f1`` compare final answers only,
  the text after the last "So the answer is" (any case) up to the end of its line, trailing period
  and whitespace stripped, from the prediction and from each reference (a reference without the
  phrase counts whole); a prediction without the phrase scores 0. ``answer_found`` is the share of
  predictions with the phrase. ROUGE and BLEU still compare the full texts (``flanmix evaluate``'s
  rule, :func:`flanmix.evaluate.cot_answer`);
- ``score`` (rows of a task's scored kind, ``doc["scored"]``): the row's primary metric
  (``doc["primary_metric"]``: ``acc`` for options tasks, ``exact_match`` for chain-of-thought rows),
  averaged per template (:func:`template_score`), which the cluster groups average.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict

GEN_METRICS = ("exact_match", "f1", "rouge1", "rouge2", "rougeL", "bleu")
_PUNCT = set(string.punctuation)
_COT_ANSWER = re.compile(r"so the answer is", re.IGNORECASE)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 between normalized prediction and reference (0-1)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def cot_answer(text: str) -> str | None:
    """The final answer of a chain of thought: what follows the last "So the answer is" (any case)
    up to the end of that line, without a trailing period or whitespace; None without the phrase."""
    found = list(_COT_ANSWER.finditer(text))
    if not found:
        return None
    return text[found[-1].end() :].split("\n", 1)[0].strip().rstrip(".").rstrip()


def references(doc: dict) -> list[str]:
    return doc.get("references") or [doc["targets"]]


def _primary(doc: dict) -> str:
    return doc.get("primary_metric") or "rougeL"


# ----------------------------------------------------------------------------- per row


def process_options(doc: dict, results: list) -> dict:
    """Rank classification of one options row from the harness's per-option log-likelihoods."""
    lls = [r[0] if isinstance(r, (tuple, list)) else r for r in results]
    options = doc["options"]
    pred = max(range(len(lls)), key=lls.__getitem__)
    norm = [ll / max(1, len(o)) for ll, o in zip(lls, options, strict=True)]
    pred_norm = max(range(len(norm)), key=norm.__getitem__)
    gold = doc["answer_index"]
    tid = doc["template_id"]
    out = {"acc": (tid, 100.0 * (pred == gold)), "acc_norm": (tid, 100.0 * (pred_norm == gold))}
    if doc.get("scored"):
        out["score"] = out["acc"]
    return out


def process_generation(doc: dict, results: list) -> dict:
    """Scores of one generated answer against all of the row's references."""
    prediction = (results[0] if results else "").strip()
    refs = references(doc)
    tid = doc["template_id"]
    wanted = set(doc.get("report_metrics") or ("exact_match", "f1"))
    out: dict = {}
    answer, gold = prediction, refs
    if doc.get("cot"):  # EM and F1 on the final answers only
        answer = cot_answer(prediction)
        gold = [a if (a := cot_answer(r)) is not None else r for r in refs]
        out["answer_found"] = (tid, 100.0 * (answer is not None))
    if answer is None:
        out["exact_match"] = out["f1"] = (tid, 0.0)
    else:
        norm = normalize_answer(answer)
        out["exact_match"] = (tid, 100.0 * max(norm == normalize_answer(r) for r in gold))
        out["f1"] = (tid, 100.0 * max(token_f1(answer, r) for r in gold))
    rouge = [m for m in ("rouge1", "rouge2", "rougeL") if m in wanted]
    if rouge:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(rouge, use_stemmer=True)
        scores = scorer.score(refs[0], prediction)
        for m in rouge:
            out[m] = (tid, 100.0 * scores[m].fmeasure)
    if "bleu" in wanted:
        out["bleu"] = (tid, (prediction, refs[0]))
    if doc.get("scored"):
        out["score"] = out[_primary(doc)]
    return {k: v for k, v in out.items() if k in wanted or k == "score"}


# ----------------------------------------------------------------------------- aggregations


def _by_template(items: list) -> dict[str, list]:
    groups: dict[str, list] = defaultdict(list)
    for tid, value in items:
        groups[tid].append(value)
    return groups


def template_mean(items: list) -> float:
    """Mean over templates of each template's mean over its rows."""
    groups = _by_template(items)
    if not groups:
        return 0.0
    return sum(sum(v) / len(v) for v in groups.values()) / len(groups)


def corpus_bleu(pairs: list) -> float:
    """sacreBLEU over (prediction, reference) pairs."""
    import sacrebleu

    if not pairs:
        return 0.0
    return sacrebleu.corpus_bleu([p for p, _ in pairs], [[r for _, r in pairs]]).score


def template_bleu(items: list) -> float:
    """Mean over templates of each template's corpus BLEU."""
    groups = _by_template(items)
    if not groups:
        return 0.0
    return sum(corpus_bleu(v) for v in groups.values()) / len(groups)


def template_score(items: list) -> float:
    """The task's score: mean over templates of each template's primary metric, a mean over its
    rows or, for BLEU ((prediction, reference) pairs), its corpus BLEU; templates may differ (a
    chain-of-thought template scores exact match next to a ROUGE-L one)."""
    groups = _by_template(items)
    if not groups:
        return 0.0
    values = [
        corpus_bleu(v) if isinstance(v[0], (tuple, list)) else sum(v) / len(v)
        for v in groups.values()
    ]
    return sum(values) / len(groups)
