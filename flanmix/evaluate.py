"""Held-out evaluation of a model on a compiled mixture's ``eval`` split (the held-out clusters).

**Scoring, per row**

- *Options rows* (``options`` and ``answer_index`` set) are scored by rank classification: each
  option's summed log-likelihood given the prompt, ``log p(option | prompt)``; the prediction is the
  argmax (``accuracy``). Also reported: ``accuracy_norm`` (log-likelihood divided by the option's
  length in characters, lm-evaluation-harness's ``acc_norm``) and, when a template's rows share one
  option set, ``accuracy_calibrated`` (batch calibration). The options of one row share one prompt,
  cut against the longest option, so their scores compare.
- *Generation rows* are decoded greedily and compared with every gold answer in the row's
  ``references`` (see :mod:`flanmix.mixture`): ``exact_match`` and token ``f1`` after SQuAD
  normalization (the best over the references), ``rouge_1``/``rouge_2``/``rouge_l`` F-measures
  (``rouge-score``, stemmed, best over the references) and corpus ``bleu`` (sacreBLEU, all references).
  EM and F1 are always computed; ROUGE and BLEU when the row's ``metrics`` (the task file's
  ``evaluation.metrics``) name them. A template's primary metric is the first one its rows name.
- *Chain-of-thought rows* (format ``cot``/``fs_cot``: targets end "... So the answer is X."), the
  FLAN v2 way: ``exact_match`` (the primary metric) and ``f1`` compare the final answers only, the
  text after the last "So the answer is" (any case) up to the end of its line, trailing period and
  whitespace stripped, taken from the prediction and from every reference (a reference without the
  phrase counts whole); a prediction without the phrase has no answer and scores 0. ROUGE and BLEU
  still compare the full texts.
- *Decode budget*: per template, the 95th percentile of its targets' length in tokens plus 2, at
  most ``max_new_tokens_cap`` (256); ``max_new_tokens`` sets one budget for every template.

**Aggregation, FLAN's way** (:func:`aggregate`)

- per template: its primary metric over every eval row of the template;
- per task: the mean over its non-inverted templates scored with the task's metric (accuracy when it
  has options templates), with a bootstrap confidence interval (source rows resampled, seeded);
  the *best template* is chosen on a dev slice of the task's source rows (a fixed hash of task and
  source row puts 20% of them in it) and its score is reported on the other 80%, so the choice never
  sees the reported rows. Turned-around (inverted) templates are reported on their own, never in the
  task's mean;
- per cluster: the mean of its tasks' means, with a bootstrap interval.

Prompts are laid out as in training (``flanmix.models.encode_prompt``): pass the run's
``--chat-template`` and ``--seq-len`` when it used other than the defaults. Few-shot evaluation
rows (exemplars from the held-out task's own training split) are made by the compiler
(``eval: {few_shot: k}`` in the spec); ``shots`` here checks the mixture has them.

Outputs in the results folder, written to a temporary folder and renamed into place when complete:
``results.json``, ``results.md`` (tables; the model and ``--baseline`` side by side),
``predictions.json`` and ``charts/<cluster>.png``.
"""

from __future__ import annotations

import json
import re
import string
import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import EvalConfig
from .errors import FlanmixError, Location
from .mixture import Mixture
from .models import (
    Loaded,
    encode_continuation,
    encode_prompt,
    load_model,
    padded,
)
from .models import (
    check_model_name as _check_model_name,
)
from .publish import MARKER, claim, staging, write_marker
from .rank import encode_rows, option_logprobs
from .render import hash64

GENERATION_METRICS = ("exact_match", "f1", "rouge_1", "rouge_2", "rouge_l", "bleu")
METRIC_ALIASES = {
    "exact_match": "exact_match",
    "em": "exact_match",
    "squad": "exact_match",
    "f1": "f1",
    "rouge_1": "rouge_1",
    "rouge1": "rouge_1",
    "rouge_2": "rouge_2",
    "rouge2": "rouge_2",
    "rouge_l": "rouge_l",
    "rougel": "rouge_l",
    "rouge": "rouge_l",
    "bleu": "bleu",
    "sacrebleu": "bleu",
}
ROUGE_KEYS = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}
RESULTS_MARKER = "flanmix_evaluation"  # key of results.json naming the format version
RESULTS_VERSION = 2


class EvaluateError(FlanmixError):
    """An evaluation that cannot run (no eval split, missing model, occupied results folder)."""


# ----------------------------------------------------------------------------- metrics

_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 (0-1) of the normalized prediction against one normalized reference."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


_COT_ANSWER = re.compile(r"so the answer is", re.IGNORECASE)


def is_cot_row(row: dict[str, Any]) -> bool:
    """A chain-of-thought eval row (its template has ``cot: true``)."""
    return row.get("format") in ("cot", "fs_cot")


def cot_answer(text: str) -> str | None:
    """The final answer of a chain of thought: what follows the last "So the answer is" (any case)
    up to the end of that line, without a trailing period or whitespace; None without the phrase."""
    found = list(_COT_ANSWER.finditer(text))
    if not found:
        return None
    return text[found[-1].end() :].split("\n", 1)[0].strip().rstrip(".").rstrip()


def cot_answer_metrics(
    predictions: list[str], references: list[list[str]]
) -> tuple[list[str | None], dict[str, np.ndarray]]:
    """Chain-of-thought rows: each prediction's final answer (None without "So the answer is") and
    per-row ``exact_match`` and ``f1`` of it against the references' final answers (a reference
    without the phrase counts whole); a prediction without an answer scores 0."""
    answers = [cot_answer(p) for p in predictions]
    gold = [[a if (a := cot_answer(r)) is not None else r for r in refs] for refs in references]
    per_row = row_metrics([a or "" for a in answers], gold, ["exact_match", "f1"])
    found = np.array([a is not None for a in answers], dtype=np.float64)
    return answers, {m: values * found for m, values in per_row.items()}


def _bleu():
    from sacrebleu.metrics import BLEU

    return BLEU()


def _ref_streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacreBLEU's reference streams; rows with fewer references are padded with None."""
    width = max((len(r) for r in references), default=1)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


def bleu_statistics(predictions: list[str], references: list[list[str]]) -> np.ndarray:
    """Per-row sufficient statistics of corpus BLEU (n-gram matches and totals, lengths): their sum
    over any subset of rows gives that subset's corpus BLEU (:func:`bleu_from_statistics`)."""
    if not predictions:
        return np.zeros((0, 10))
    stats = _bleu()._extract_corpus_statistics(predictions, _ref_streams(references))
    return np.asarray(stats, dtype=np.float64)


def bleu_from_statistics(total: np.ndarray) -> float:
    return float(_bleu()._compute_score_from_stats([int(round(x)) for x in total]).score)


def row_metrics(
    predictions: list[str], references: list[list[str]], metrics: list[str]
) -> dict[str, np.ndarray]:
    """Per-row values (0-100) of each metric, the best over the row's references; for ``bleu``,
    the rows' BLEU statistics."""
    out: dict[str, np.ndarray] = {}
    norm_refs = [[normalize_answer(r) for r in refs] for refs in references]
    if "exact_match" in metrics:
        out["exact_match"] = np.array(
            [
                100.0 * (normalize_answer(p) in refs)
                for p, refs in zip(predictions, norm_refs, strict=True)
            ]
        )
    if "f1" in metrics:
        out["f1"] = np.array(
            [
                100.0 * max(token_f1(p, r) for r in refs)
                for p, refs in zip(predictions, references, strict=True)
            ]
        )
    rouge = [m for m in metrics if m in ROUGE_KEYS]
    if rouge:
        from rouge_score import rouge_scorer

        keys = [ROUGE_KEYS[m] for m in rouge]
        scorer = rouge_scorer.RougeScorer(keys, use_stemmer=True)
        best = np.zeros((len(predictions), len(keys)))
        for i, (p, refs) in enumerate(zip(predictions, references, strict=True)):
            for r in refs:
                s = scorer.score(r, p)
                best[i] = np.maximum(best[i], [100.0 * s[k].fmeasure for k in keys])
        for j, m in enumerate(rouge):
            out[m] = best[:, j]
    if "bleu" in metrics:
        out["bleu"] = bleu_statistics(predictions, references)
    return out


def metric_value(
    metric: str, values: np.ndarray, weights: np.ndarray | None = None
) -> float | None:
    """The metric over rows (weights: how often each row counts; None: once each)."""
    if len(values) == 0:
        return None
    if metric == "bleu":
        total = values.sum(axis=0) if weights is None else weights @ values
        return bleu_from_statistics(total)
    if weights is None:
        return float(values.mean())
    den = weights.sum()
    return float(weights @ values / den) if den else None


def generation_scores(
    predictions: list[str], references: list[str] | list[list[str]]
) -> dict[str, float]:
    """Every generation metric over the rows, 0-100 (a reference may be a string or a list)."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    per_row = row_metrics(predictions, refs, list(GENERATION_METRICS))
    return {m: metric_value(m, per_row[m]) or 0.0 for m in GENERATION_METRICS}


def row_primary_metric(row: dict[str, Any]) -> str:
    if row.get("options") and row.get("answer_index") is not None:
        return "accuracy"
    if is_cot_row(row):  # the final answer's exact match, as FLAN v2 scores CoT
        return "exact_match"
    for name in row.get("metrics") or []:
        if (key := METRIC_ALIASES.get(name.lower())) in GENERATION_METRICS:
            return key
    return "rouge_l"


primary_metric = row_primary_metric  # the name earlier versions exported


def _row_metric_names(row: dict[str, Any]) -> list[str]:
    named = [METRIC_ALIASES.get(n.lower()) for n in row.get("metrics") or []]
    wanted = {"exact_match", "f1", row_primary_metric(row), *(n for n in named if n)}
    return [m for m in GENERATION_METRICS if m in wanted]


# ----------------------------------------------------------------------------- model passes


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def rank_classify(
    loaded: Loaded, rows: list[dict], cfg: EvalConfig, bar=None
) -> list[dict[str, Any]]:
    """Per row: the options' log-likelihoods (``scores``: separator and option given the inputs,
    lm-evaluation-harness's number; see ``flanmix.rank``, which runs each prompt once for all its
    options), the prediction by sum (``pred``) and by log-likelihood per character of the option
    (``pred_norm``, the harness's acc_norm)."""
    tok, kind = loaded.tokenizer, loaded.kind
    encoded = encode_rows(tok, kind, rows, cfg.seq_len, cfg.chat_template)
    scored = option_logprobs(loaded.model, kind, encoded, tok.pad_token_id, cfg.batch_size, bar)
    out = []
    for row, per_option in zip(rows, scored, strict=True):
        s = [lp for lp, _ in per_option]
        norm = [lp / max(1, len(option)) for lp, option in zip(s, row["options"], strict=True)]
        out.append(
            {
                "scores": s,
                "pred": max(range(len(s)), key=s.__getitem__),
                "pred_norm": max(range(len(norm)), key=norm.__getitem__),
            }
        )
    return out


@torch.no_grad()
def generate(
    loaded: Loaded,
    rows: list[dict],
    cfg: EvalConfig,
    bar=None,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Greedy continuations of each row's prompt (left-padded batches for causal models), at most
    ``max_new_tokens`` (default: ``cfg.max_new_tokens``, else 32) new tokens each."""
    budget_new = max_new_tokens or cfg.max_new_tokens or 32
    tok, kind, model = loaded.tokenizer, loaded.kind, loaded.model
    device = next(model.parameters()).device
    prompts = []
    for row in rows:
        ids = encode_prompt(tok, row["inputs"], kind, cfg.chat_template)
        budget = max(2, cfg.seq_len - budget_new)
        prompts.append(ids if len(ids) <= budget else ids[:1] + ids[len(ids) - budget + 1 :])
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]), reverse=True)
    outputs = [""] * len(rows)
    pad = tok.pad_token_id
    for b in range(0, len(order), cfg.batch_size):
        chunk = order[b : b + cfg.batch_size]
        seqs = [prompts[i] for i in chunk]
        left = kind == "causal"
        ids = padded(seqs, pad, left=left).to(device)
        mask = padded([[1] * len(s) for s in seqs], 0, left=left).to(device)
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=budget_new,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
        )
        new = gen[:, ids.shape[1] :] if kind == "causal" else gen
        for i, seq in zip(chunk, new.tolist(), strict=True):
            outputs[i] = tok.decode(seq, skip_special_tokens=True).strip()
        if bar is not None:
            bar.update(len(chunk))
    return outputs


def decode_budgets(loaded: Loaded, rows: list[dict], cfg: EvalConfig) -> dict[str, int]:
    """New tokens per template: ``cfg.max_new_tokens`` when set, else the 95th percentile of the
    template's target lengths in this model's tokens, plus 2, at most ``cfg.max_new_tokens_cap``."""
    by_template: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        by_template[row["template_id"]].append(
            len(encode_continuation(loaded.tokenizer, row["targets"], loaded.kind, eos=False))
        )
    if cfg.max_new_tokens:
        return dict.fromkeys(by_template, cfg.max_new_tokens)
    return {
        tid: max(1, min(cfg.max_new_tokens_cap, int(np.percentile(n, 95, method="higher")) + 2))
        for tid, n in by_template.items()
    }


# ----------------------------------------------------------------------------- per-template scores


def row_key(row: dict[str, Any]) -> str:
    """The source row an eval row was rendered from: the unit that the dev slice and the bootstrap
    draw (all templates of one source row go together)."""
    return f"{row['source_split']}:{row['source_index']}"


@dataclass
class TemplateScores:
    """One template's per-row values of its primary metric, keyed by source row."""

    template_id: str
    task: str
    cluster: str
    kind: str  # "options" | "generation"
    inverted: bool
    metric: str
    keys: list[str]
    values: np.ndarray  # (rows,) values 0-100, or (rows, 10) BLEU statistics

    def score(self, mask: np.ndarray | None = None) -> float | None:
        if mask is None:
            return metric_value(self.metric, self.values)
        return metric_value(self.metric, self.values[mask]) if mask.any() else None

    def resampled(self, weights: np.ndarray, key_index: dict[str, int]) -> np.ndarray:
        """The metric under each bootstrap resample (weights: resamples x source rows)."""
        idx = np.fromiter((key_index[k] for k in self.keys), np.int64, len(self.keys))
        n = weights.shape[1]
        if self.metric == "bleu":  # per source row statistics, then each resample's corpus BLEU
            per_key = np.zeros((n, self.values.shape[1]))
            np.add.at(per_key, idx, self.values)
            return np.array([bleu_from_statistics(t) for t in weights @ per_key])
        num = weights @ np.bincount(idx, weights=self.values, minlength=n)
        den = weights @ np.bincount(idx, minlength=n).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)


def in_dev_slice(task: str, key: str, fraction: float) -> bool:
    """Whether a task's source row is in its dev slice: a fixed hash of (task, source row), the
    same for every template, model and run."""
    return hash64("flanmix-dev-slice", task, key) < fraction * 2.0**64


def _interval(samples: np.ndarray) -> list[float] | None:
    samples = samples[~np.isnan(samples)]
    if len(samples) < 2:
        return None
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def aggregate(
    scores: dict[str, TemplateScores],
    *,
    dev_fraction: float = 0.2,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per task: mean over its non-inverted templates (of the task's metric: the one most of them
    use, accuracy on a tie) with a bootstrap CI,
    the best template chosen on the dev slice and scored on the other rows, the inverted templates'
    own mean. Per cluster: mean of its tasks' means with a bootstrap CI."""
    by_task: dict[str, list[TemplateScores]] = defaultdict(list)
    for tid in sorted(scores):
        by_task[scores[tid].task].append(scores[tid])
    tasks: dict[str, dict[str, Any]] = {}
    samples: dict[str, np.ndarray] = {}
    for name, group in sorted(by_task.items()):
        forward = [t for t in group if not t.inverted]
        inverted = [t for t in group if t.inverted]
        if forward:  # what most non-inverted templates use; on a tie accuracy, then the first's
            counts = Counter(t.metric for t in forward)
            top = max(counts.values())
            metric = "accuracy" if counts.get("accuracy") == top else counts.most_common(1)[0][0]
        else:
            metric = None
        scored = [t for t in forward if t.metric == metric]
        entry: dict[str, Any] = {
            "cluster": group[0].cluster,
            "metric": metric,
            "templates": len(scored),
            "template_ids": [t.template_id for t in scored],
            "mean": None,
            "ci": None,
            "rows": 0,
            "best_template": None,
            "best": None,
            "best_on_dev": None,
            "dev_rows": 0,
            "report_rows": 0,
            "other_templates": [t.template_id for t in forward if t.metric != metric],
            "inverted": None,
        }
        if inverted:
            inv_scores = [s for t in inverted if (s := t.score()) is not None]
            entry["inverted"] = {
                "templates": [t.template_id for t in inverted],
                "metrics": sorted({t.metric for t in inverted}),
                "mean": sum(inv_scores) / len(inv_scores) if inv_scores else None,
            }
        if scored:
            keys = sorted({k for t in scored for k in t.keys})
            key_index = {k: i for i, k in enumerate(keys)}
            template_scores = [s for t in scored if (s := t.score()) is not None]
            entry["mean"] = sum(template_scores) / len(template_scores)
            entry["rows"] = len(keys)
            dev = {k for k in keys if in_dev_slice(name, k, dev_fraction)}
            entry["dev_rows"], entry["report_rows"] = len(dev), len(keys) - len(dev)
            best = None
            for t in scored:
                mask = np.array([k in dev for k in t.keys])
                on_dev, on_rest = t.score(mask), t.score(~mask)
                if on_dev is None or on_rest is None:
                    continue
                if best is None or on_dev > best[1]:
                    best = (t.template_id, on_dev, on_rest)
            if best is not None:
                entry["best_template"], entry["best_on_dev"], entry["best"] = best
            if resamples > 0:
                rng = np.random.default_rng(hash64(seed, "bootstrap", name))
                weights = rng.multinomial(len(keys), np.full(len(keys), 1 / len(keys)), resamples)
                weights = weights.astype(np.float64)
                per_template = np.vstack([t.resampled(weights, key_index) for t in scored])
                with warnings.catch_warnings():  # a resample may draw none of a template's rows
                    warnings.simplefilter("ignore", RuntimeWarning)
                    samples[name] = np.nanmean(per_template, axis=0)
                entry["ci"] = _interval(samples[name])
        tasks[name] = entry
    clusters: dict[str, dict[str, Any]] = {}
    for name, t in tasks.items():
        if t["mean"] is not None:
            clusters.setdefault(t["cluster"], {"tasks": []})["tasks"].append(name)
    for c in clusters.values():
        c["mean"] = sum(tasks[n]["mean"] for n in c["tasks"]) / len(c["tasks"])
        c["ci"] = None
        if resamples > 0 and all(n in samples for n in c["tasks"]):
            c["ci"] = _interval(np.mean(np.vstack([samples[n] for n in c["tasks"]]), axis=0))
    return {"tasks": tasks, "clusters": dict(sorted(clusters.items()))}


# ----------------------------------------------------------------------------- one model


def _is_options(row: dict[str, Any]) -> bool:
    return bool(row.get("options")) and row.get("answer_index") is not None


def score_model(loaded: Loaded, rows: list[dict], cfg: EvalConfig) -> dict[str, Any]:
    """Run one model over the rows: per-template scores, the FLAN aggregation, per-row predictions."""
    from tqdm.auto import tqdm

    options_rows = [r for r in rows if _is_options(r)]
    gen_rows = [r for r in rows if not _is_options(r)]
    budgets = decode_budgets(loaded, gen_rows, cfg)
    total = sum(len(r["options"]) for r in options_rows) + len(gen_rows)
    loaded.model.eval()
    generated: dict[int, str] = {}
    with tqdm(
        total=total,
        desc=f"eval {loaded.name}",
        unit="seq",
        disable=None if cfg.progress else True,  # None: no bar when stderr is not a terminal
        dynamic_ncols=True,
    ) as bar:
        ranked = rank_classify(loaded, options_rows, cfg, bar) if options_rows else []
        by_budget: dict[int, list[int]] = defaultdict(list)
        for i, row in enumerate(gen_rows):
            by_budget[budgets[row["template_id"]]].append(i)
        for budget, idx in sorted(by_budget.items()):
            texts = generate(loaded, [gen_rows[i] for i in idx], cfg, bar, max_new_tokens=budget)
            generated.update(zip(idx, texts, strict=True))

    by_template: dict[str, list[tuple[dict, Any]]] = defaultdict(list)
    for row, res in zip(options_rows, ranked, strict=True):
        by_template[row["template_id"]].append((row, res))
    for i, row in enumerate(gen_rows):
        by_template[row["template_id"]].append((row, generated[i]))

    templates: dict[str, dict[str, Any]] = {}
    template_scores: dict[str, TemplateScores] = {}
    predictions = []
    for tid, pairs in sorted(by_template.items()):
        first = pairs[0][0]
        info: dict[str, Any] = {
            "task": first["task"],
            "cluster": first["cluster"],
            "inverted": bool(first["inverted"]),
            "n": len(pairs),
        }
        if _is_options(first):
            correct = np.array([100.0 * (res["pred"] == row["answer_index"]) for row, res in pairs])
            info["kind"], info["metric"] = "options", "accuracy"
            info["accuracy"] = float(correct.mean())
            info["accuracy_norm"] = (
                100
                * sum(res["pred_norm"] == row["answer_index"] for row, res in pairs)
                / len(pairs)
            )
            calibrated = batch_calibrated_correct(pairs)
            info["accuracy_calibrated"] = (
                None if calibrated is None else 100 * calibrated / len(pairs)
            )
            info["chance"] = 100 * sum(1 / len(row["options"]) for row, _ in pairs) / len(pairs)
            values = correct
            for (row, res), c in zip(pairs, correct, strict=True):
                predictions.append(
                    {
                        "example_id": row["example_id"],
                        "template_id": tid,
                        "prediction": row["options"][res["pred"]],
                        "target": row["targets"],
                        "correct": bool(c),
                        "scores": res["scores"],
                    }
                )
        else:
            metric = row_primary_metric(first)
            names = _row_metric_names(first)
            texts = [text for _, text in pairs]
            refs = [row["references"] for row, _ in pairs]
            per_row = row_metrics(texts, refs, names)
            answers = None
            if is_cot_row(first):  # EM and F1 on the final answers; ROUGE/BLEU on the full texts
                answers, on_answers = cot_answer_metrics(texts, refs)
                per_row.update(on_answers)
                info["answer_found"] = 100.0 * sum(a is not None for a in answers) / len(answers)
            info["kind"], info["metric"] = "generation", metric
            info["max_new_tokens"] = budgets[tid]
            for m in names:
                info[m] = metric_value(m, per_row[m])
            values = per_row[metric]
            for j, (row, text) in enumerate(pairs):
                pred = {
                    "example_id": row["example_id"],
                    "template_id": tid,
                    "prediction": text,
                    "target": row["targets"],
                    "references": row["references"],
                }
                if answers is not None:
                    pred["answer"] = answers[j]
                for m in ("exact_match", "f1"):
                    pred[m] = float(per_row[m][j])
                predictions.append(pred)
        info["score"] = info[info["metric"]]
        templates[tid] = info
        template_scores[tid] = TemplateScores(
            tid,
            info["task"],
            info["cluster"],
            info["kind"],
            info["inverted"],
            info["metric"],
            [row_key(row) for row, _ in pairs],
            values,
        )
    agg = aggregate(
        template_scores, dev_fraction=cfg.dev_fraction, resamples=cfg.resamples, seed=cfg.seed
    )
    for t in agg["tasks"].values():  # options tasks: the chance line of their charts
        chances = [
            templates[tid]["chance"] for tid in t["template_ids"] if "chance" in templates[tid]
        ]
        t["chance"] = sum(chances) / len(chances) if chances else None
    return {"templates": templates, **agg, "predictions": predictions}


def batch_calibrated_correct(pairs: list[tuple[dict, dict]]) -> int | None:
    """Correct predictions after batch calibration (Zhou et al., 2023): each option's score minus
    that option's mean score over the template's rows, which removes a small model's prior for one
    label. Reported next to plain accuracy, never instead of it.

    Only defined when the rows share one set of options (a label prior to remove): for
    multiple-choice rows with options of their own (COPA, PIQA ...) it is None.
    """
    if len({tuple(row["options"]) for row, _ in pairs}) != 1:
        return None
    totals: dict[str, list[float]] = defaultdict(list)
    for row, res in pairs:
        for option, score in zip(row["options"], res["scores"], strict=True):
            totals[option].append(score)
    mean = {option: sum(v) / len(v) for option, v in totals.items()}
    correct = 0
    for row, res in pairs:
        adjusted = [s - mean[o] for o, s in zip(row["options"], res["scores"], strict=True)]
        correct += max(range(len(adjusted)), key=adjusted.__getitem__) == row["answer_index"]
    return correct


# ----------------------------------------------------------------------------- reports


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def markdown_report(results: dict[str, Any]) -> str:
    model, base = results["model"], results.get("baseline")
    b = bool(base)
    out = [f"# Evaluation of `{model['name']}`", ""]
    shots = results.get("shots") or 0
    out += [
        f"Mixture: `{results['mixture']}`, split `eval` ({results['rows']} rows), "
        + (f"{shots}-shot." if shots else "zero-shot.")
    ]
    if base:
        out += [f"Baseline: `{base['name']}` (same rows, same prompts)."]
    dev = results["dev_slice"]
    out += [
        "",
        "Scores are 0-100. Options templates: rank-classification accuracy; generation templates: "
        "their first listed metric (EM/F1 against every reference, ROUGE, or corpus BLEU). "
        "A task's mean averages its non-inverted templates; inverted templates are reported apart. "
        f"Intervals: {results['bootstrap']['level']}% bootstrap over source rows "
        f"({results['bootstrap']['resamples']} resamples, seed {results['bootstrap']['seed']}). "
        f"Best template: chosen on a dev slice ({dev['rule']}), scored on the other rows "
        "(n/a: no source row in the dev slice, or none outside it).",
        "",
        "## Clusters",
        "",
        "| cluster (mean of task means) | tasks | model |" + (" baseline |" if b else ""),
        "|---|---:|---|" + ("---|" if b else ""),
    ]
    for name, c in model["clusters"].items():
        line = f"| {name} | {len(c['tasks'])} | {_with_ci(c['mean'], c['ci'])} |"
        if b:
            bc = base["clusters"].get(name, {})
            line += f" {_with_ci(bc.get('mean'), bc.get('ci'))} |"
        out.append(line)
    out += [
        "",
        "## Tasks",
        "",
        "| task | metric | templates | mean | best (dev-chosen) | best template | inverted mean |"
        + (" baseline mean | baseline best |" if b else ""),
        "|---|---|---:|---|---:|---|---:|" + ("---|---:|" if b else ""),
    ]
    for name, t in model["tasks"].items():
        inv = t["inverted"]["mean"] if t.get("inverted") else None
        line = (
            f"| {name} | {t['metric'] or ''} | {t['templates']} | {_with_ci(t['mean'], t['ci'])} "
            f"| {_fmt(t['best']) or 'n/a'} | {t['best_template'] or ''} | {_fmt(inv)} |"
        )
        if b:
            bt = base["tasks"].get(name, {})
            best = _fmt(bt.get("best")) or ("n/a" if bt else "")
            line += f" {_with_ci(bt.get('mean'), bt.get('ci'))} | {best} |"
        out.append(line)
    out += [
        "",
        "## Templates",
        "",
        "| template | inv | n | metric | model |" + (" baseline |" if b else "") + " detail |",
        "|---|---|---:|---|---:|" + ("---:|" if b else "") + "---|",
    ]
    for tid, info in model["templates"].items():
        if info["kind"] == "options":
            detail = f"acc_norm {_fmt(info['accuracy_norm'])}, chance {_fmt(info['chance'])}"
            if info["accuracy_calibrated"] is not None:
                detail += f", acc_calibrated {_fmt(info['accuracy_calibrated'])}"
        else:
            detail = (
                ", ".join(f"{m} {_fmt(info[m])}" for m in GENERATION_METRICS if m in info)
                + f"; max_new_tokens {info['max_new_tokens']}"
            )
        line = (
            f"| {tid} | {'yes' if info['inverted'] else ''} | {info['n']} | {info['metric']} "
            f"| {_fmt(info['score'])} |"
        )
        if b:
            line += f" {_fmt(base['templates'].get(tid, {}).get('score'))} |"
        out.append(line + f" {detail} |")
    return "\n".join(out) + "\n"


def cluster_charts(results: dict[str, Any], folder: Path) -> list[Path]:
    """One bar chart per cluster: each task's mean with its 95% interval, the dev-chosen best
    template (tick), the chance line of options tasks; model and baseline side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    model, base = results["model"], results.get("baseline")
    paths = []
    for cluster, c in model["clusters"].items():
        names = c["tasks"]
        series = [(model["name"], model["tasks"])] + (
            [(f"baseline: {base['name']}", base["tasks"])] if base else []
        )
        width = 0.8 / len(series)
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.6))
        for k, (label, tasks) in enumerate(series):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(names))]
            means = [tasks[n]["mean"] or 0.0 for n in names]
            errs = [
                [m - (tasks[n]["ci"] or [m, m])[0] for n, m in zip(names, means, strict=True)],
                [(tasks[n]["ci"] or [m, m])[1] - m for n, m in zip(names, means, strict=True)],
            ]
            ax.bar(xs, means, width, yerr=errs, capsize=2, label=f"{label} (mean, 95% CI)")
            best = [
                (x, tasks[n]["best"])
                for x, n in zip(xs, names, strict=True)
                if tasks[n]["best"] is not None
            ]
            if best:
                ax.scatter(
                    [x for x, _ in best],
                    [y for _, y in best],
                    marker="_",
                    s=200,
                    color="black",
                    zorder=3,
                    label="best template (dev-chosen)" if k == 0 else None,
                )
        chance_drawn = False
        for i, n in enumerate(names):
            chance = model["tasks"][n].get("chance")
            if chance is not None:
                ax.hlines(
                    chance, i - 0.45, i + 0.45, colors="red", linestyles="dashed", zorder=4,
                    label=None if chance_drawn else "chance",
                )  # fmt: skip
                chance_drawn = True
        ax.set_xticks(
            range(len(names)), [f"{n}\n({model['tasks'][n]['metric']})" for n in names], fontsize=8
        )
        ax.set_ylim(0, 100)
        ax.set_ylabel("score (0-100)")
        ax.set_title(f"held-out cluster: {cluster}")
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', cluster)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- entry point


def check_model_name(name: str) -> None:
    """:func:`flanmix.models.check_model_name` with evaluate's error class."""
    _check_model_name(name, EvaluateError)


def open_model(name: str, mixture: Mixture, like: Loaded | None = None, seed: int = 0) -> Loaded:
    """Load a model for evaluation. ``tiny`` (as a baseline) is an untrained tiny model built the way
    ``flanmix train`` builds one (seed 0, a tokenizer trained on the mixture's train rows), with the
    shape of ``like`` when that is a tiny run: an untuned model of the same size, not the run's own
    starting weights."""
    check_model_name(name)
    if name != "tiny":
        return load_model(name)
    texts = [
        t
        for row in mixture.iter_rows("train", columns=["inputs", "targets"])
        for t in (row["inputs"], row["targets"])
    ]
    shape = {}
    if like is not None and getattr(like.model.config, "model_type", "") == "llama":
        c = like.model.config
        shape = {
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "intermediate_size": c.intermediate_size,
            "num_attention_heads": c.num_attention_heads,
            "max_position_embeddings": c.max_position_embeddings,
            "vocab_size": c.vocab_size,
        }
    return load_model("tiny", texts=texts, seed=seed, **shape)


def _mixture_shots(mix: Mixture) -> int:
    return int(((mix.info.spec.get("eval") or {}).get("few_shot")) or 0)


def read_eval_rows(mix: Mixture, cfg: EvalConfig) -> list[dict[str, Any]]:
    """The eval rows to score (at most ``cfg.max_examples`` per template); raises on a mixture
    without an eval split or whose generation rows carry no references."""
    if not mix.num_rows("eval"):
        raise EvaluateError(
            "the mixture has no eval split (no held-out cluster?)",
            location=Location(file=str(mix.path)),
            hint="compile a spec with a holdout (e.g. mixtures/flan2021_loco.yaml)",
        )
    per_template: dict[str, int] = defaultdict(int)
    rows = []
    for row in mix.iter_rows("eval"):
        if cfg.max_examples and per_template[row["template_id"]] >= cfg.max_examples:
            continue
        if not _is_options(row) and not row.get("references"):
            raise EvaluateError(
                f"task {row['task']!r} has eval rows without references "
                f"(template {row['template_id']}, row {row['example_id']})",
                location=Location(file=str(mix.path), task=row["task"]),
                hint="recompile the mixture with this flanmix: every eval row gets its references",
            )
        answer, options = row.get("answer_index"), row.get("options")
        if options and answer is not None and not 0 <= answer < len(options):
            raise EvaluateError(
                f"answer_index {answer} is outside the row's {len(options)} options "
                f"(row {row['example_id']})",
                location=Location(
                    file=str(mix.path), task=row["task"], template=row["template_id"]
                ),
                hint=f"run 'flanmix verify {mix.path}'; recompile the mixture",
            )
        per_template[row["template_id"]] += 1
        rows.append(row)
    return rows


def _check_results_folder(out: Path, run: dict[str, Any], overwrite: bool) -> None:
    """Refuse a results folder that holds something else: another run's results (unless
    ``overwrite``) or files flanmix did not write."""
    if not out.exists():
        return
    if not out.is_dir():
        raise EvaluateError("results folder is a file", location=Location(file=str(out)))
    if not any(out.iterdir()):
        return
    previous = out / "results.json"
    try:
        old = json.loads(previous.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        old = None
    if not isinstance(old, dict) or "run" not in old:
        raise EvaluateError(
            "results folder is not empty and holds no flanmix results: not replacing it",
            location=Location(file=str(out)),
            hint="pass another -o/--out folder",
        )
    if old["run"] != run and not overwrite:
        raise EvaluateError(
            f"results folder holds another run's results (model {old['run'].get('model')!r} on "
            f"{old['run'].get('mixture')})",
            location=Location(file=str(out)),
            hint="pass another -o/--out folder, or --overwrite to replace them",
        )


def evaluate(
    model: str,
    mixture: str | Path,
    out: str | Path,
    baseline: str | None = None,
    cfg: EvalConfig | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` (and ``baseline``) on the mixture's eval split; writes and returns results.

    ``verify``: re-hash the mixture's shards against its manifest first (``flanmix verify``).

    Everything is checked before any model runs (mixture, eval rows, models, results folder), and
    the results are written to a temporary folder renamed into place at the end: an interrupted or
    failed evaluation leaves the results folder as it was.
    """
    from .verify import open_verified

    cfg = cfg or EvalConfig()
    mix = open_verified(mixture, verify=verify)
    rows = read_eval_rows(mix, cfg)
    shots = _mixture_shots(mix)
    if cfg.shots is not None and cfg.shots != shots:
        raise EvaluateError(
            f"--shots {cfg.shots}: the mixture's eval rows have {shots} exemplar(s) each",
            location=Location(file=str(mix.path)),
            hint=f"compile the mixture with 'eval: {{few_shot: {cfg.shots}}}' in its spec "
            "(exemplars from each held-out task's own training split)",
        )
    for name in (model, baseline):
        if name:
            check_model_name(name)
    out = Path(out)
    run = {"model": model, "mixture": str(mix.path.resolve()), "baseline": baseline}
    _check_results_folder(out, run, cfg.overwrite)  # before the lock too: fail before waiting
    _mark_earlier_results(out)
    models = [Path(n) for n in (model, baseline) if n and Path(n).exists()]
    # flanmix's output guard (flanmix.publish.claim): OUT is never the mixture, a model or the
    # working folder; one writer at a time (a second evaluate of OUT fails "in use"); an existing
    # folder is one flanmix made, and the check above said which results it may replace
    with claim(
        out,
        overwrite=cfg.overwrite,
        protect=[mix.path, *models],
        what="the results",
        exists_ok=True,
        replace=True,  # results of the same run are replaced without --overwrite
        error=EvaluateError,
    ) as out:
        _check_results_folder(out, run, cfg.overwrite)
        return _evaluate_into(out, run, mix, rows, shots, model, baseline, cfg)


def _mark_earlier_results(out: Path) -> None:
    """Mark a results folder written before results were marked (``results.json`` naming its run),
    so the output guard knows flanmix made it."""
    try:
        old = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(old, dict) and "run" in old and not (out / MARKER).exists():
        write_marker(out, "evaluation")


def _evaluate_into(out, run, mix, rows, shots, model, baseline, cfg) -> dict[str, Any]:
    device = _device(cfg.device)
    torch.manual_seed(0)
    if not cfg.progress or not sys.stderr.isatty():  # transformers' load bars too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    loaded = open_model(model, mix)
    loaded.model.to(device)
    results: dict[str, Any] = {
        RESULTS_MARKER: RESULTS_VERSION,
        "run": run,
        "mixture": str(mix.path),
        "rows": len(rows),
        "shots": shots,
        "config": cfg.model_dump(),
        "dev_slice": {
            "fraction": cfg.dev_fraction,
            "rule": f"source rows with hash64('flanmix-dev-slice', task, row) < {cfg.dev_fraction:g} x 2^64",
        },
        "bootstrap": {"resamples": cfg.resamples, "seed": cfg.seed, "level": 95},
        "model": {"name": model, "kind": loaded.kind, **score_model(loaded, rows, cfg)},
    }
    if baseline:
        base = open_model(baseline, mix, like=loaded)
        del loaded
        base.model.to(device)
        results["baseline"] = {"name": baseline, "kind": base.kind, **score_model(base, rows, cfg)}

    predictions = {"model": results["model"].pop("predictions")}
    if baseline:
        predictions["baseline"] = results["baseline"].pop("predictions")
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging(out) as tmp:
        charts = cluster_charts(results, tmp / "charts")
        results["charts"] = [str(out / "charts" / p.name) for p in charts]
        (tmp / "predictions.json").write_text(json.dumps(predictions, indent=1) + "\n")
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "results.md").write_text(markdown_report(results))
        write_marker(tmp, "evaluation")
    results["paths"] = {
        "json": str(out / "results.json"),
        "markdown": str(out / "results.md"),
        "charts": results["charts"],
    }
    return results
