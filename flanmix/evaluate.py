"""Held-out evaluation of a model on a compiled mixture's ``eval`` split (the held-out clusters).

- **Options rows** (``options`` and ``answer_index`` set) are scored by rank classification: each
  option's summed log-likelihood given the prompt, ``log p(option | prompt)``; the prediction is the
  argmax. Accuracy is reported, plus the accuracy of the length-normalized score (mean log-prob per
  option token) as ``accuracy_norm`` and, when a template's rows share one option set, of the
  batch-calibrated score as ``accuracy_calibrated``. All options of many rows go through the model
  in one batch.
- **Generation rows** are decoded greedily and scored against the target with exact match
  (SQuAD-style normalization), ROUGE-L F1 (``rouge-score``, stemmed) and corpus BLEU (``sacrebleu``).

Scores are kept per template, then per task (mean over its templates and the best template), then
per cluster (mean over its tasks of each task's mean). Each template has a primary metric: accuracy
for options, else the first of the row's ``metrics`` that we compute (default ROUGE-L). Prompts are
laid out as in training (``flanmix.models.encode_prompt``): pass the run's ``--chat-template`` and
``--seq-len`` when it used other than the defaults. The options of one row share one prompt, cut
against the longest option, so their scores compare.

Outputs under ``out/``: ``results.json``, ``results.md`` (tables, tuned model and ``--baseline`` side
by side) and ``charts/<cluster>.png``.
"""

from __future__ import annotations

import json
import re
import string
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import FlanmixError, Location
from .mixture import Mixture
from .models import (
    Loaded,
    encode_prompt,
    load_model,
    padded,
)
from .rank import encode_rows, option_logprobs

GENERATION_METRICS = ("exact_match", "rouge_l", "bleu")
METRIC_ALIASES = {
    "exact_match": "exact_match",
    "em": "exact_match",
    "squad": "exact_match",
    "rouge_l": "rouge_l",
    "rougel": "rouge_l",
    "rouge": "rouge_l",
    "bleu": "bleu",
    "sacrebleu": "bleu",
}


class EvaluateError(FlanmixError):
    """An evaluation that cannot run (no eval split, unreadable model)."""


@dataclass
class EvalConfig:
    batch_size: int = 16  # sequences per forward pass (options are flattened first)
    max_new_tokens: int = 32  # greedy decoding length for generation rows
    max_examples: int = 0  # rows per template (0: all)
    seq_len: int = 512  # prompt + continuation budget, same truncation policy as training
    chat_template: bool = False
    device: str = "auto"
    progress: bool = True


# ----------------------------------------------------------------------------- metrics


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Exact match, ROUGE-L F1 (mean) and corpus BLEU, all on a 0-100 scale."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    n = max(1, len(predictions))
    return {
        "exact_match": 100
        * sum(
            normalize_answer(p) == normalize_answer(r)
            for p, r in zip(predictions, references, strict=False)
        )
        / n,
        "rouge_l": 100
        * sum(
            scorer.score(r, p)["rougeL"].fmeasure
            for p, r in zip(predictions, references, strict=False)
        )
        / n,
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score if predictions else 0.0,
    }


def primary_metric(row: dict[str, Any]) -> str:
    if row.get("options"):
        return "accuracy"
    for name in row.get("metrics") or []:
        if (key := METRIC_ALIASES.get(name.lower())) in GENERATION_METRICS:
            return key
    return "rouge_l"


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
def generate(loaded: Loaded, rows: list[dict], cfg: EvalConfig, bar=None) -> list[str]:
    """Greedy continuations of each row's prompt (left-padded batches for causal models)."""
    tok, kind, model = loaded.tokenizer, loaded.kind, loaded.model
    device = next(model.parameters()).device
    prompts = []
    for row in rows:
        ids = encode_prompt(tok, row["inputs"], kind, cfg.chat_template)
        budget = cfg.seq_len - cfg.max_new_tokens
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
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
        )
        new = gen[:, ids.shape[1] :] if kind == "causal" else gen
        for i, seq in zip(chunk, new.tolist(), strict=False):
            outputs[i] = tok.decode(seq, skip_special_tokens=True).strip()
        if bar is not None:
            bar.update(len(chunk))
    return outputs


def score_model(loaded: Loaded, rows: list[dict], cfg: EvalConfig) -> dict[str, Any]:
    """Run one model over the rows; returns per-template scores and per-row predictions."""
    from tqdm.auto import tqdm

    options_rows = [r for r in rows if r.get("options") and r.get("answer_index") is not None]
    gen_rows = [r for r in rows if not (r.get("options") and r.get("answer_index") is not None)]
    total = sum(len(r["options"]) for r in options_rows) + len(gen_rows)
    loaded.model.eval()
    with tqdm(
        total=total,
        desc=f"eval {loaded.name}",
        unit="seq",
        disable=None if cfg.progress else True,  # None: no bar when stderr is not a terminal
        dynamic_ncols=True,
    ) as bar:
        ranked = rank_classify(loaded, options_rows, cfg, bar) if options_rows else []
        generated = generate(loaded, gen_rows, cfg, bar) if gen_rows else []

    by_template: dict[str, dict[str, Any]] = defaultdict(lambda: {"rows": []})
    predictions = []
    for row, res in zip(options_rows, ranked, strict=False):
        by_template[row["template_id"]]["rows"].append((row, res))
        predictions.append(
            {
                "example_id": row["example_id"],
                "template_id": row["template_id"],
                "prediction": row["options"][res["pred"]],
                "target": row["targets"],
                "correct": res["pred"] == row["answer_index"],
                "scores": res["scores"],
            }
        )
    for row, text in zip(gen_rows, generated, strict=False):
        by_template[row["template_id"]]["rows"].append((row, text))
        predictions.append(
            {
                "example_id": row["example_id"],
                "template_id": row["template_id"],
                "prediction": text,
                "target": row["targets"],
            }
        )

    templates = {}
    for tid, entry in sorted(by_template.items()):
        pairs = entry["rows"]
        first = pairs[0][0]
        info: dict[str, Any] = {
            "task": first["task"],
            "cluster": first["cluster"],
            "n": len(pairs),
            "metric": primary_metric(first),
        }
        if first.get("options"):
            info["kind"] = "options"
            info["accuracy"] = (
                100 * sum(res["pred"] == row["answer_index"] for row, res in pairs) / len(pairs)
            )
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
        else:
            info["kind"] = "generation"
            info.update(
                generation_scores([text for _, text in pairs], [row["targets"] for row, _ in pairs])
            )
        info["score"] = info[info["metric"]]
        templates[tid] = info
    return {"templates": templates, **aggregate(templates), "predictions": predictions}


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
        for option, score in zip(row["options"], res["scores"], strict=False):
            totals[option].append(score)
    mean = {option: sum(v) / len(v) for option, v in totals.items()}
    correct = 0
    for row, res in pairs:
        adjusted = [s - mean[o] for o, s in zip(row["options"], res["scores"], strict=False)]
        correct += max(range(len(adjusted)), key=adjusted.__getitem__) == row["answer_index"]
    return correct


def aggregate(templates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per task: mean and best template of its metric; per cluster: mean of task means.

    A task's metric is the one most of its templates use (accuracy on a tie): turned-around
    templates of an options task are generation templates, reported per template but not averaged
    into the task's accuracy.
    """
    by_task: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for tid, info in templates.items():
        by_task[info["task"]][tid] = info
    tasks: dict[str, dict[str, Any]] = {}
    for name, infos in sorted(by_task.items()):
        counts: dict[str, int] = defaultdict(int)
        for info in infos.values():
            counts[info["metric"]] += 1
        metric = max(counts, key=lambda m: (counts[m], m == "accuracy"))
        scores = {tid: info["score"] for tid, info in infos.items() if info["metric"] == metric}
        best = max(scores, key=scores.__getitem__)
        tasks[name] = {
            "cluster": next(iter(infos.values()))["cluster"],
            "metric": metric,
            "mean": sum(scores.values()) / len(scores),
            "best_template": best,
            "best": scores[best],
            "templates": len(scores),
        }
    clusters: dict[str, dict[str, Any]] = {}
    for name, t in sorted(tasks.items()):
        c = clusters.setdefault(t["cluster"], {"tasks": []})
        c["tasks"].append(name)
    for c in clusters.values():
        c["mean"] = sum(tasks[n]["mean"] for n in c["tasks"]) / len(c["tasks"])
    return {"tasks": dict(sorted(tasks.items())), "clusters": clusters}


# ----------------------------------------------------------------------------- reports


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown_report(results: dict[str, Any]) -> str:
    model, base = results["model"], results.get("baseline")
    head = "| {} | model |" + (" baseline |" if base else "")
    rule = "|---|---:|" + ("---:|" if base else "")

    def line(label: str, a: float, b: float | None) -> str:
        return f"| {label} | {_fmt(a)} |" + (f" {_fmt(b)} |" if base else "")

    out = [f"# Evaluation of `{model['name']}`", ""]
    out += [f"Mixture: `{results['mixture']}`, split `eval` ({results['rows']} rows)."]
    if base:
        out += [f"Baseline: `{base['name']}` (same rows, same prompts)."]
    out += [
        "",
        "Accuracy is rank classification; generation tasks use their primary metric (EM, ROUGE-L or BLEU). 0-100.",
        "",
    ]
    out += ["## Clusters", "", head.format("cluster (mean of task means)"), rule]
    for name, c in model["clusters"].items():
        out.append(line(name, c["mean"], base["clusters"][name]["mean"] if base else None))
    out += [
        "",
        "## Tasks",
        "",
        "| task | metric | mean | best | best template |"
        + (" baseline mean | baseline best |" if base else ""),
        "|---|---|---:|---:|---|" + ("---:|---:|" if base else ""),
    ]
    for name, t in model["tasks"].items():
        row = f"| {name} | {t['metric']} | {_fmt(t['mean'])} | {_fmt(t['best'])} | {t['best_template']} |"
        if base:
            bt = base["tasks"][name]
            row += f" {_fmt(bt['mean'])} | {_fmt(bt['best'])} |"
        out.append(row)
    out += [
        "",
        "## Templates",
        "",
        "| template | n | metric | model |" + (" baseline |" if base else "") + " detail |",
        "|---|---:|---|---:|" + ("---:|" if base else "") + "---|",
    ]
    for tid, info in model["templates"].items():
        if info["kind"] == "options":
            detail = f"acc_norm {_fmt(info['accuracy_norm'])}, acc_calibrated {_fmt(info['accuracy_calibrated'])}, chance {_fmt(info['chance'])}"
        else:
            detail = ", ".join(f"{m} {_fmt(info[m])}" for m in GENERATION_METRICS)
        row = f"| {tid} | {info['n']} | {info['metric']} | {_fmt(info['score'])} |"
        if base:
            row += f" {_fmt(base['templates'][tid]['score'])} |"
        out.append(row + f" {detail} |")
    return "\n".join(out) + "\n"


def cluster_charts(results: dict[str, Any], folder: Path) -> list[Path]:
    """One bar chart per cluster: each task's mean score (and best template as a tick), model vs baseline."""
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
            ax.bar(xs, [tasks[n]["mean"] for n in names], width, label=f"{label} (mean)")
            ax.scatter(
                xs,
                [tasks[n]["best"] for n in names],
                marker="_",
                s=200,
                color="black",
                zorder=3,
                label="best template" if k == 0 else None,
            )
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


def open_model(name: str, mixture: Mixture, like: Loaded | None = None, seed: int = 0) -> Loaded:
    """Load a model for evaluation. ``tiny`` (as a baseline) is an untrained tiny model built the way
    ``flanmix train`` builds one (seed 0, a tokenizer trained on the mixture's train rows), with the
    shape of ``like`` when that is a tiny run: an untuned model of the same size, not the run's own
    starting weights."""
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


def evaluate(
    model: str,
    mixture: str | Path,
    out: str | Path,
    baseline: str | None = None,
    cfg: EvalConfig | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (and ``baseline``) on the mixture's eval split; writes and returns results."""
    cfg = cfg or EvalConfig()
    mix = Mixture.open(mixture)
    if not mix.num_rows("eval"):
        raise EvaluateError(
            "the mixture has no eval split (no held-out cluster?)",
            location=Location(file=str(mix.path)),
        )
    per_template: dict[str, int] = defaultdict(int)
    rows = []
    for row in mix.iter_rows("eval"):
        if cfg.max_examples and per_template[row["template_id"]] >= cfg.max_examples:
            continue
        per_template[row["template_id"]] += 1
        rows.append(row)
    device = _device(cfg.device)
    torch.manual_seed(0)
    if not cfg.progress or not sys.stderr.isatty():  # transformers' load bars too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    loaded = open_model(model, mix)
    loaded.model.to(device)
    results: dict[str, Any] = {
        "mixture": str(mix.path),
        "rows": len(rows),
        "config": cfg.__dict__,
        "model": {"name": model, "kind": loaded.kind, **score_model(loaded, rows, cfg)},
    }
    if baseline:
        base = open_model(baseline, mix, like=loaded)
        del loaded
        base.model.to(device)
        results["baseline"] = {"name": baseline, "kind": base.kind, **score_model(base, rows, cfg)}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    charts = cluster_charts(results, out / "charts")
    results["charts"] = [str(p) for p in charts]
    predictions = {"model": results["model"].pop("predictions")}
    if baseline:
        predictions["baseline"] = results["baseline"].pop("predictions")
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown_report(results))
    results["paths"] = {
        "json": str(out / "results.json"),
        "markdown": str(out / "results.md"),
        "charts": results["charts"],
    }
    return results
