"""Rendering one work unit into rows (runs in the workers).

:class:`UnitRenderer` renders a unit of a :class:`~flanmix.plan.Plan`: template choice, zero/few-shot,
options block in FLAN's or named styles, example ids; skipped draws are redrawn on other rows of the
unit. Every decision is its own named draw (:mod:`flanmix.sampling`) from a hash of (seed, task,
split, row, repeat): there is no shared random state, and no two decisions share bits. Rows are
:class:`Row` tuples whose fields are the columns of :data:`flanmix.mixture.SCHEMA`.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from .errors import CompileError, FlanmixError, Location, SourceError, TemplateError
from .mixture import SCHEMA
from .plan import TaskPlan, Unit, seeded_rng
from .render import (
    CompiledTemplate,
    References,
    RowPreparer,
    Skip,
    compile_template,
    example_seed,
    hash64,
    input_values,
    mix64,
    seed_base,
)
from .sampling import (
    FEW_SHOT_FORMATS,
    draw,
    draw_many,
    mix64_many,
    options_block,
    pick_many,
    uniform,
    uniform_many,
)
from .sampling import index as draw_index
from .schema import Task
from .sources import SourceReader, SpillCache
from .spec import MixtureSpec

#: the seeding of ``random.Random``'s C base: what ``Random.seed`` calls for an int, after checks
_MT_SEED = super(random.Random, random.Random).seed


@functools.lru_cache(maxsize=65536)
def _id_base(seed: int, split: str, task: str, template: str, fmt: str, source_split: str) -> int:
    return hash64(seed, split, task, template, fmt, source_split)


def example_id(
    seed: int,
    split: str,
    task: str,
    template: str,
    fmt: str,
    source_split: str,
    index: int,
    repeat: int,
) -> str:
    """A stable 16-hex-digit id; also orders rows within a shard and picks their shard.

    A keyed hash of (seed, split, task, template, format, source split), cached, mixed with
    (index, repeat) by :func:`flanmix.render.mix64`: unique within that key, 64-bit random across.
    """
    return format(
        mix64(_id_base(seed, split, task, template, fmt, source_split), index * 1_000_003 + repeat),
        "016x",
    )


@dataclass
class WorkerContext:
    """Everything a worker needs, pickled once per worker."""

    spec: MixtureSpec
    tasks: dict[str, Task]
    plan_tasks: dict[str, TaskPlan]
    task_files: dict[str, str]
    template_lines: dict[tuple[str, str], int | None]
    tokenizer: str | None = None  # formats.max_length in tokens: the tokenizer's path


class UnitRenderer:
    """Renders units; caches compiled templates, row preparers and open sources per task."""

    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx
        self._compiled: dict[str, dict[str, CompiledTemplate]] = {}
        self._prepare: dict[str, RowPreparer] = {}
        self._references: dict[str, References] = {}
        self._readers: dict[str, SourceReader] = {}
        self._spills = SpillCache()  # big row groups, shared by this worker's readers
        self._blocks: dict[tuple, tuple[str, tuple[str, ...]]] = {}
        self._shot_rows: dict[str, list] = {}  # eval few-shot: prepared training rows per task
        self._shot_pools: dict[tuple[str, str], list] = {}
        self._fallback: Counter = Counter()
        self._rng = random.Random()  # re-seeded for every few-shot row's exemplar draws

    def _templates(self, task: str) -> dict[str, CompiledTemplate]:
        if task not in self._compiled:
            t = self.ctx.tasks[task]
            file = self.ctx.task_files.get(task)
            self._compiled[task] = {
                tt.id: compile_template(
                    task, tt, Location(file=file, line=self.ctx.template_lines.get((task, tt.id)))
                )
                for tt in t.templates
            }
            self._prepare[task] = RowPreparer(t, Location(file=file))
            self._references[task] = References(t, Location(file=file))
        return self._compiled[task]

    def _reader(self, key: str) -> SourceReader:
        if key not in self._readers:
            if len(self._readers) > 8:
                for reader in self._readers.values():
                    reader.close()
                self._readers.clear()
            self._readers[key] = SourceReader(self.ctx.plan_tasks[key].handle, self._spills)
        return self._readers[key]

    def _block(self, choices: tuple[str, ...], style: tuple[str, str] | None):
        key = (choices, style)
        hit = self._blocks.get(key)
        if hit is None:
            if len(self._blocks) > 50_000:
                self._blocks.clear()
            hit = self._blocks[key] = options_block(choices, style)
        return hit

    def render(self, unit: Unit) -> tuple[pa.Table, dict[str, Counter]]:
        """The unit's rows as one table (:data:`~flanmix.mixture.SCHEMA`) in ``example_id``
        order, a sorted run for the shard writer, and its stats: kept, dropped and redrawn
        examples, and few-shot examples written zero-shot because no exemplar fit."""
        ctx = self.ctx
        spec = ctx.spec
        key = f"{unit.split}:{unit.task}"
        tp = ctx.plan_tasks[key]
        compiled = self._templates(unit.task)
        prepare = self._prepare[unit.task]
        task = ctx.tasks[unit.task]
        seed = spec.seed
        m = tp.num_selected
        positions = np.arange(unit.start, unit.stop, dtype=np.int64)
        if unit.split == "train":
            # full passes over the selected rows, then a seeded subset for the last partial pass
            full = (tp.draws // m) * m
            sel_pos = positions % m
            rest = positions >= full
            if rest.any():
                r = tp.draws - full
                subset = np.sort(
                    seeded_rng(seed, "rest", unit.task).choice(m, size=r, replace=False)
                )
                sel_pos[rest] = subset[positions[rest] - full]
            repeats = positions // m
        else:
            sel_pos = positions
            repeats = np.zeros_like(positions)
        src = sel_pos if tp.selected is None else tp.selected[sel_pos]
        uniq, inverse = np.unique(src, return_inverse=True)
        try:
            raw_rows = self._reader(key).read(uniq)
        except FlanmixError as exc:  # located at the source file (an NIv2 JSON line), kept so
            raise CompileError(
                f"cannot read rows of {tp.handle.description}: {exc.message}",
                location=exc.location.with_(task=unit.task),
                hint=exc.hint,
            ) from exc
        except Exception as exc:  # noqa: BLE001
            raise CompileError(
                f"cannot read rows of {tp.handle.description}: {type(exc).__name__}: {exc}",
                location=Location(file=ctx.task_files.get(unit.task), task=unit.task),
            ) from exc
        stats = {k: Counter() for k in ("kept", "dropped", "redrawn", "fewshot_fallback")}
        self._fallback = stats["fewshot_fallback"]
        kept, dropped = stats["kept"], stats["dropped"]
        prepared: list[Any] = []
        for k, raw in enumerate(raw_rows):
            try:
                prepared.append(prepare(raw))
            except SourceError as exc:
                raise self._bad_row(exc, tp.handle, unit.task, int(uniq[k])) from exc
        if unit.split == "eval":
            cols = sorted_table(
                self._render_eval(unit, tp, task, compiled, prepared, inverse, src, kept, dropped)
            )
        else:
            cols = self._render_train(
                unit, tp, task, compiled, prepared, uniq, inverse, src, repeats, kept, stats
            )
        return cols, stats

    def _bad_row(self, exc: SourceError, handle, task: str, index: int) -> CompileError:
        """A source row whose value does not fit its declared field (a label below -1)."""
        return CompileError(
            f"{handle.split} row {index} of {handle.description}: {exc.message}",
            location=exc.location.with_(file=self.ctx.task_files.get(task), task=task, row=index),
            hint=exc.hint,
        )

    def _fail(self, exc: TemplateError, task: str, split: str, index: int) -> CompileError:
        loc = exc.location.with_(task=task, row=index)
        return CompileError(
            f"template fails on {split} row {index}: {exc.message}", location=loc, hint=exc.hint
        )

    def _render_eval(self, unit, tp, task, compiled, prepared, inverse, src, kept, dropped):
        spec = self.ctx.spec
        fallback = self._fallback
        seed = spec.seed
        rows: list[Row] = []
        metrics_gen = list(task.evaluation.metrics)
        split = tp.handle.split
        refs_of = self._references[unit.task]
        for j, pos in enumerate(inverse.tolist()):
            row = prepared[pos]
            index = int(src[j])
            if isinstance(row, Skip):
                dropped[(unit.task, "*", row.reason)] += len(tp.templates)
                continue
            gold = None  # the references expression's answers, computed once per row
            for tid in tp.templates:
                ct = compiled[tid]
                try:
                    res = ct.render(row, example_seed(seed, unit.task, tid, split, index))
                except TemplateError as exc:
                    raise self._fail(exc, unit.task, split, index) from exc
                if isinstance(res, Skip):
                    dropped[(unit.task, tid, res.reason)] += 1
                    continue
                text_in, target, choices = res
                options = answer = None
                if choices is not None:
                    if target not in choices:
                        raise _target_error(ct, split, index, target, choices)
                    options, answer = list(choices), choices.index(target)
                    if spec.eval.options_in_input and not ct.template.choices_in_input:
                        text_in += self._block(choices, None)[0]
                    fmt, metrics = "zs_opt", ["accuracy"]
                    references = [target]  # the correct option
                else:
                    fmt, metrics = ("cot" if ct.template.cot else "zs_noopt"), metrics_gen
                    if ct.template.inverted:  # e.g. "write the question": the question
                        references = [target]
                    else:
                        if gold is None:
                            try:
                                gold = refs_of.values(row)
                            except TemplateError as exc:
                                raise self._fail(exc, unit.task, split, index) from exc
                        references = list(dict.fromkeys([target, *gold]))
                if tp.shots is not None and ct.template.few_shot:
                    text_in, n_ex = self._eval_shots(unit.task, tp, ct, text_in, index)
                    if n_ex:
                        fmt = "fs_cot" if fmt == "cot" else "fs_" + fmt.removeprefix("zs_")
                    else:
                        fallback[unit.task] += 1
                rows.append(
                    Row(
                        inputs=text_in,
                        targets=target,
                        task=unit.task,
                        cluster=tp.cluster,
                        template_id=ct.full_id,
                        inverted=ct.template.inverted,
                        format=fmt,
                        options=options,
                        answer_index=answer,
                        metrics=metrics,
                        references=references,
                        source_split=split,
                        source_index=index,
                        example_id=example_id(seed, "eval", unit.task, tid, fmt, split, index, 0),
                    )
                )
                kept[(unit.task, ct.full_id, fmt)] += 1
        return _columns(rows)

    def _render_train(
        self, unit, tp, task, compiled, prepared, uniq, inverse, src, repeats, kept, stats
    ) -> pa.Table:
        """Train rows: per draw a template (named draws), its zero-shot base, then formats.

        A draw whose row or template is skipped (a filter, a label-gated template) is redrawn with
        the same template on another row of the unit, up to ``REDRAWS`` times, so label-gated
        templates keep their share and the task its planned count; what is still missing is
        counted as dropped (the manifest's per-task shortfall).
        """
        base = self._train_bases(unit, tp, compiled, prepared, uniq, inverse, src, repeats, stats)
        cols = self._train_formats(unit, tp, compiled, base, stats)
        return self._train_table(unit, tp, compiled, cols, kept)

    def _choose(self, tp, compiled, h: np.ndarray, turn: np.ndarray):
        """The (draw, template position) pairs of a unit's draws, in draw order: what
        :func:`choose_templates` gives each draw, made for all draws at once in modes random and
        round_robin (the same numbers)."""
        spec = self.ctx.spec
        templates = tp.templates
        mode, inv_setting = spec.templates.mode, spec.templates.inverted
        normal = [i for i, t in enumerate(templates) if not compiled[t].template.inverted]
        inverted = [i for i, t in enumerate(templates) if compiled[t].template.inverted]
        if mode == "all":
            names = [templates[i] for i in normal], [templates[i] for i in inverted]
            where = {t: i for i, t in enumerate(templates)}
            pairs_j, pairs_t = [], []
            for j, hj in enumerate(h.tolist()):
                for tid in choose_templates(hj, templates, *names, inv_setting, mode, 0):
                    pairs_j.append(j)
                    pairs_t.append(where[tid])
            return np.array(pairs_j, dtype=np.int64), np.array(pairs_t, dtype=np.int64)
        pick = draw_many(h, "template") if mode == "random" else turn.astype(np.uint64)

        def of(group: list[int]) -> np.ndarray:
            return np.array(group, dtype=np.int64)[(pick % np.uint64(len(group))).astype(np.int64)]

        if not isinstance(inv_setting, bool) and normal and inverted:
            use_inv = (draw_many(h, "inverted") >> np.uint64(11)).astype(np.float64) / float(
                1 << 53
            ) < inv_setting
            chosen = np.where(use_inv, of(inverted), of(normal))
        else:
            chosen = of(list(range(len(templates))))
        return np.arange(len(h), dtype=np.int64), chosen

    def _train_bases(
        self, unit, tp, compiled, prepared, uniq, inverse, src, repeats, stats
    ) -> list[_Base]:
        """Pass 1: the zero-shot base of every (draw, template), skipped draws redrawn."""
        spec = self.ctx.spec
        seed, split, task = spec.seed, tp.handle.split, unit.task
        bare = spec.formats.instructions != "templates"
        dropped, redrawn = stats["dropped"], stats["redrawn"]
        templates = tp.templates
        src = src.astype(np.int64)
        repeats = repeats.astype(np.int64)
        h = mix64_many(seed_base(seed, task, "#draw", split), src * 1_000_003 + repeats)
        pairs_j, pairs_t = self._choose(tp, compiled, h, src + repeats)
        # the example seed of every pair: keyed by template (and repeat), mixed with the row
        reps = repeats[pairs_j]
        combo, which = np.unique(
            pairs_t * (int(reps.max(initial=0)) + 1) + reps, return_inverse=True
        )
        width = int(reps.max(initial=0)) + 1
        keys = np.array(
            [
                seed_base(
                    seed,
                    task,
                    templates[c // width] + (f"#{c % width}" if c % width else ""),
                    split,
                )
                for c in combo.tolist()
            ],
            dtype=np.uint64,
        )
        rseeds = mix64_many(keys[which.reshape(-1)], src[pairs_j]).tolist() if len(pairs_j) else []
        h_list, src_list, rep_list, inv_list = (
            h.tolist(),
            src.tolist(),
            repeats.tolist(),
            inverse.tolist(),
        )
        base: list[_Base] = []
        for j, t, rseed in zip(pairs_j.tolist(), pairs_t.tolist(), rseeds, strict=True):
            tid = templates[t]
            ct = compiled[tid]
            index, rep = src_list[j], rep_list[j]
            rec = self._base(task, ct, prepared[inv_list[j]], index, rep, rseed, split, bare)
            if isinstance(rec, str):
                first, attempt = rec, 0
                while isinstance(rec, str) and attempt < REDRAWS:
                    attempt += 1
                    k = draw_index(h_list[j], f"redraw:{tid}:{attempt}", len(prepared))
                    at = unit.start + j  # the draw position: unique within the task
                    rseed = example_seed(seed, task, f"{tid}#redraw{attempt}", split, at)
                    rec = self._base(task, ct, prepared[k], int(uniq[k]), rep, rseed, split, bare)
                    if not isinstance(rec, str):
                        rec.redraw = (at, attempt)
                if isinstance(rec, str):
                    dropped[(task, tid, first)] += 1
                    continue
                redrawn[(task, tid, first)] += 1
            rec.t = t
            base.append(rec)
        return base

    def _train_formats(self, unit, tp, compiled, base: list[_Base], stats) -> _TrainColumns:
        """Pass 2: formats (options, few-shot) of every base, as columns."""
        fmts = self.ctx.spec.formats
        bare = fmts.instructions != "templates"
        by_template: dict[str, list[int]] = {}
        if fmts.few_shot > 0:
            for b, rec in enumerate(base):
                by_template.setdefault(rec.tid, []).append(b)
        markers, headers = fmts.styles()
        flan_only = markers == ("flan",)
        # the unit's format draws made at once (the same numbers and picks as one row at a time)
        rseeds = [rec.rseed for rec in base]
        options_u = uniform_many(rseeds, "options")
        few_u = uniform_many(rseeds, "few_shot") if fmts.few_shot > 0 else None
        if not flan_only and base:
            marker_of = pick_many(rseeds, "marker", markers)
            header_of = pick_many(rseeds, "header", headers)
        shots = FEW_SHOT_FORMATS[fmts.few_shot_format]
        laid_out: dict[Any, str] = {}  # exemplars, each laid out once a unit
        cols = _TrainColumns()
        inputs, targets, fcode, ocode, answers = (
            cols.inputs,
            cols.targets,
            cols.format,
            cols.options,
            cols.answer,
        )
        option_ids = cols.option_ids
        fallback = stats["fewshot_fallback"]
        for b, rec in enumerate(base):
            tmpl = compiled[rec.tid].template
            text_in, choices, rseed = rec.input, rec.choices, rec.rseed
            listed = tmpl.choices_in_input and not bare  # the template's input lists the choices
            show = False
            style = None
            if choices is not None:
                show = listed or options_u[b] < fmts.options
                if show and not listed and not flan_only:
                    marker = marker_of[b]
                    if marker != "flan":
                        style = (header_of[b], marker)
            few = tmpl.few_shot and fmts.few_shot > 0 and few_u[b] < fmts.few_shot
            shown_target = rec.target
            if show:
                if listed:
                    labels = choices
                else:
                    block, labels = self._block(choices, style)
                    text_in = text_in + block
                answer = choices.index(rec.target)
                shown_target = labels[answer]
                code = option_ids.get(labels)
                if code is None:
                    code = option_ids[labels] = len(option_ids)
                ocode.append(code)
                answers.append(answer)
            else:
                ocode.append(-1)
                answers.append(-1)
            parts: tuple[str, ...] | None = None
            if few:
                group = by_template.get(rec.tid, ())
                pool = self._exemplar_pool(base, group, b, rseed)
                exemplars = []
                for g in pool:
                    # an exemplar's text depends on its row and on how the query shows options
                    decorate = show and base[g].choices is not None and not listed
                    key = (g, style) if decorate else g
                    ex = laid_out.get(key)
                    if ex is None:
                        ex = laid_out[key] = self._exemplar(shots, base[g], decorate, style)
                    exemplars.append(ex)
                fit, query = self._fit_parts(shots, exemplars, text_in)
                if fit:
                    parts = (*(exemplars[i] for i in fit), query)
                else:  # no exemplar fits max_length: written zero-shot, and counted
                    fallback[unit.task] += 1
                few = bool(fit)
            if tmpl.cot:
                fcode.append(FORMAT_CODE["fs_cot" if few else "cot"])
            else:
                fcode.append(
                    (2 if few else 0) + (0 if show else 1)
                )  # zs_opt zs_noopt fs_opt fs_noopt
            # a few-shot input stays in parts, joined once in the unit's table (joined_strings)
            inputs.append(parts if parts is not None else text_in)
            targets.append(shown_target)
        cols.base = base
        return cols

    def _exemplar(self, shots, ex: _Base, decorate: bool, style) -> str:
        """One row laid out as an exemplar, options shown as the query shows them."""
        ex_in, ex_target = ex.input, ex.target
        if decorate:
            block, labels = self._block(ex.choices, style)
            ex_in, ex_target = ex_in + block, labels[ex.choices.index(ex.target)]
        return shots.exemplar(ex_in, ex_target)

    def _train_table(self, unit, tp, compiled, cols: _TrainColumns, kept) -> pa.Table:
        """The unit's train rows as one table in ``example_id`` order, and their kept counts."""
        base = cols.base
        n = len(base)
        seed, split, task = self.ctx.spec.seed, tp.handle.split, unit.task
        templates = tp.templates
        t_arr = np.fromiter((rec.t for rec in base), dtype=np.int64, count=n)
        f_arr = np.array(cols.format, dtype=np.int64)
        # example ids: a keyed hash of (template, format[/redraw]) mixed with (index, repeat), or
        # for a redrawn example with (draw position, attempt)
        id_n = np.fromiter(
            (
                rec.index * 1_000_003 + rec.rep
                if rec.redraw is None
                else rec.redraw[0] * 1_000_003 + rec.redraw[1]
                for rec in base
            ),
            dtype=np.int64,
            count=n,
        )
        redrawn = np.fromiter((rec.redraw is not None for rec in base), dtype=np.int64, count=n)
        nf = len(FORMATS)
        combo, which = np.unique((t_arr * nf + f_arr) * 2 + redrawn, return_inverse=True)
        id_keys = np.array(
            [
                _id_base(
                    seed,
                    "train",
                    task,
                    templates[c // (2 * nf)],
                    FORMATS[c // 2 % nf] + ("/redraw" if c % 2 else ""),
                    split,
                )
                for c in combo.tolist()
            ],
            dtype=np.uint64,
        )
        keys = mix64_many(id_keys[which.reshape(-1)], id_n)
        tf, counts = np.unique(t_arr * nf + f_arr, return_counts=True)
        for c, k in zip(tf.tolist(), counts.tolist(), strict=True):
            kept[(task, compiled[templates[c // nf]].full_id, FORMATS[c % nf])] += k
        order = np.argsort(keys, kind="stable")
        ol = order.tolist()
        t_sorted = t_arr[order]
        opt = np.array(cols.options, dtype=np.int64)[order]
        ans = np.array(cols.answer, dtype=np.int64)[order]
        options_list = sorted(cols.option_ids, key=cols.option_ids.get)
        option_values = pa.array([list(o) for o in options_list], pa.list_(pa.string()))
        columns = {
            "inputs": joined_strings(cols.inputs, ol),
            "targets": pa.array([cols.targets[i] for i in ol], pa.string()),
            "task": pa.repeat(pa.scalar(task, pa.string()), n),
            "cluster": pa.repeat(pa.scalar(tp.cluster, pa.string()), n),
            "template_id": pa.array([compiled[t].full_id for t in templates], pa.string()).take(
                pa.array(t_sorted)
            ),
            "inverted": pa.array(
                np.array([compiled[t].template.inverted for t in templates], dtype=bool)[t_sorted]
                if n
                else np.zeros(0, dtype=bool)
            ),
            "format": pa.array(FORMATS, pa.string()).take(pa.array(f_arr[order])),
            "options": option_values.take(pa.array(opt, mask=opt < 0)),
            "answer_index": pa.array(ans, pa.int32(), mask=ans < 0),
            "metrics": pa.nulls(n, pa.list_(pa.string())),
            "references": pa.nulls(n, pa.list_(pa.string())),
            "source_split": pa.repeat(pa.scalar(split, pa.string()), n),
            "source_index": pa.array(
                np.fromiter((rec.index for rec in base), dtype=np.int64, count=n)[order]
            ),
            "example_id": hex_ids(keys[order]),
        }
        return pa.Table.from_pydict(columns, schema=SCHEMA)

    def _base(self, task, ct, row, index, rep, rseed, split, bare) -> _Base | str:
        """The zero-shot base of one example, or the reason it is skipped."""
        if isinstance(row, Skip):
            return row.reason
        try:
            res = ct.render(row, rseed)
        except TemplateError as exc:
            raise self._fail(exc, task, split, index) from exc
        if isinstance(res, Skip):
            return res.reason
        if res.choices is not None and res.target not in res.choices:
            raise _target_error(ct, split, index, res.target, res.choices)
        text_in = res.input
        if bare:
            text_in = self._bare_input(task, ct, row, rseed, res.choices)
        return _Base(ct.template.id, text_in, res.target, res.choices, index, rep, rseed)

    def _bare_input(self, task: str, ct: CompiledTemplate, row, rseed, choices) -> str:
        """``formats.instructions`` none / dataset_name: what the template's input shows of the
        row (its ``{{ }}`` values, one per line), without its words; dataset_name puts the task
        id first."""
        text = "\n".join(input_values(ct, row, rseed, choices))
        if self.ctx.spec.formats.instructions == "dataset_name":
            text = f"{task}\n\n{text}"
        return text

    def _eval_shots(self, task, tp, ct, text_in, index) -> tuple[str, int]:
        """``eval.few_shot`` exemplars for one eval row: rows of the task's training split
        rendered with the same template (FLAN's few-shot evaluation), picked by a named draw."""
        pool = self._shot_pool(task, tp, ct)
        if tp.shots.split == tp.handle.split:  # same rows (e.g. samples): never the row itself
            pool = [p for p in pool if p[0] != index]
        if not pool:
            return text_in, 0
        spec = self.ctx.spec
        rng = random.Random(
            draw(example_seed(spec.seed, task, ct.template.id, tp.handle.split, index), "exemplars")
        )
        picked = rng.sample(pool, min(spec.eval.few_shot, len(pool)))
        shots = FEW_SHOT_FORMATS[spec.formats.few_shot_format]
        return self._fit_shots(shots, [shots.exemplar(x, y) for _, x, y in picked], text_in)

    def _shot_pool(self, task, tp, ct) -> list[tuple[int, str, str]]:
        """(index, input, target) of up to 8 x eval.few_shot training rows (a seeded subset, the
        same for every unit) rendered with one template, options as the eval rows show them."""
        key = (task, ct.template.id)
        if key in self._shot_pools:
            return self._shot_pools[key]
        spec = self.ctx.spec
        if task not in self._shot_rows:
            n = tp.shots.num_rows
            size = min(n, 8 * spec.eval.few_shot)
            idx = np.sort(seeded_rng(spec.seed, "eval-shots", task).choice(n, size, replace=False))
            with contextlib.closing(SourceReader(tp.shots, self._spills)) as reader:
                raw = reader.read(idx)
            prepare = self._prepare[task]
            rows = []
            for i, r in zip(idx.tolist(), raw, strict=True):
                try:
                    rows.append((i, prepare(r)))
                except SourceError as exc:
                    raise self._bad_row(exc, tp.shots, task, i) from exc
            self._shot_rows[task] = rows
        pool = []
        for i, row in self._shot_rows[task]:
            if isinstance(row, Skip):
                continue
            seed = example_seed(spec.seed, task, ct.template.id + "#shot", tp.shots.split, i)
            try:
                res = ct.render(row, seed)
            except TemplateError as exc:
                raise self._fail(exc, task, tp.shots.split, i) from exc
            if isinstance(res, Skip):
                continue
            x, y = res.input, res.target
            listed = ct.template.choices_in_input or not spec.eval.options_in_input
            if res.choices is not None and not listed:
                x += self._block(res.choices, None)[0]
            pool.append((i, x, y))
        self._shot_pools[key] = pool
        return pool

    def _exemplar_pool(self, base, group, b, rseed) -> list[int]:
        """Up to k other rows of the same template, by a named draw; repeats of the query's own
        source row are not exemplars.

        The draws are ``random.Random(seed).randrange(n)``'s, made without a new generator per
        row: one generator is re-seeded (the C seeding, as ``Random.seed`` does for an int) and
        ``randrange``'s rejection loop is written out (CPython draws ``n.bit_length()`` bits until
        the value is below ``n``). A test compares the picks with the running Python's
        ``random.Random``, so a Python that drew otherwise would fail it."""
        k = self.ctx.spec.formats.k
        index = base[b].index
        rng = self._rng
        _MT_SEED(rng, draw(rseed, "exemplars"))
        bits = rng.getrandbits
        picked, seen = [], {index}
        n = len(group)
        width = n.bit_length()
        for _ in range(min(4 * k, 4 * n)):
            r = bits(width)
            while r >= n:
                r = bits(width)
            g = group[r]
            if base[g].index not in seen:
                seen.add(base[g].index)
                picked.append(g)
                if len(picked) == k:
                    break
        return picked

    def _fit_shots(self, shots, pieces: list[str], text_in: str) -> tuple[str, int]:
        """Exemplars (laid out by ``shots.exemplar``, in order) that fit ``formats.max_length``
        with the query, joined by the few-shot format; (text_in, 0) when none fits."""
        fit, query = self._fit_parts(shots, pieces, text_in)
        if not fit:
            return text_in, 0
        return "".join([*(pieces[i] for i in fit), query]), len(fit)

    def _fit_parts(self, shots, pieces: list[str], text_in: str) -> tuple[list[int], str]:
        """The positions of the exemplars (``pieces``, in order) that fit ``formats.max_length``
        with the query, and the query laid out by the few-shot format: the input is those pieces
        then the query. No positions when none fits (the row is written zero-shot)."""
        if not pieces:
            return [], text_in
        length = self._length
        query = shots.query(text_in)
        budget = self._max_length - length(query)
        fit = []
        for i, piece in enumerate(pieces):
            n = length(piece)
            if n > budget:
                continue
            budget -= n
            fit.append(i)
        if fit and self._tokenizer is not None:  # token counts of pieces do not add up exactly
            while fit and length("".join([*(pieces[i] for i in fit), query])) > self._max_length:
                fit.pop()
        return fit, query

    @functools.cached_property
    def _max_length(self) -> int:
        limit = self.ctx.spec.formats.max_length
        return limit if isinstance(limit, int) else limit.tokens

    @functools.cached_property
    def _tokenizer(self):
        return load_tokenizer(self.ctx.tokenizer) if self.ctx.tokenizer else None

    def _length(self, text: str) -> int:
        tok = self._tokenizer
        return len(text) if tok is None else tok(text)


REDRAWS = 32  # attempts to replace a skipped draw with another row of the unit


def choose_templates(
    h: int,
    templates: list[str],
    normal: list[str],
    inverted: list[str],
    inv_setting: bool | float,
    mode: str,
    turn: int,
) -> list[str]:
    """The template(s) of one draw whose hash is ``h``.

    ``inverted`` a fraction: the named draw "inverted" picks the turned-around group with that
    probability, then the independent draw "template" picks uniformly within the group. Mode
    ``all`` gives every template (turned-around ones in the chosen fraction of draws); mode
    ``round_robin`` rotates by ``turn`` (row index + repeat), so a row's repeats see every template.
    """
    if mode == "all":
        use_inv = inv_setting is True or (
            inv_setting is not False and uniform(h, "inverted") < inv_setting
        )
        return normal + inverted if use_inv else normal
    group = templates
    if not isinstance(inv_setting, bool) and normal and inverted:
        group = inverted if uniform(h, "inverted") < inv_setting else normal
    if mode == "random":
        return [group[draw_index(h, "template", len(group))]]
    return [group[turn % len(group)]]


@dataclass(slots=True)
class _Base:
    """One rendered zero-shot example before formats: what pass 2 and exemplars read."""

    tid: str
    input: str
    target: str
    choices: tuple[str, ...] | None
    index: int  # source row
    rep: int
    rseed: int
    redraw: tuple[int, int] | None = None  # (draw position, attempt) of a redrawn skip
    t: int = -1  # the template's position in the task plan's templates


#: The ``format`` column's values; pass 2 writes their positions.
FORMATS = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt", "cot", "fs_cot")
FORMAT_CODE = {f: i for i, f in enumerate(FORMATS)}


@dataclass(slots=True)
class _TrainColumns:
    """Pass 2's output: the varying columns of a unit's train rows, in base order."""

    inputs: list[str | tuple[str, ...]] = field(default_factory=list)  # text, or parts to join
    targets: list[str] = field(default_factory=list)
    format: list[int] = field(default_factory=list)  # positions in FORMATS
    options: list[int] = field(default_factory=list)  # option_ids value, -1: no options shown
    answer: list[int] = field(default_factory=list)  # -1: no options shown
    option_ids: dict[tuple[str, ...], int] = field(default_factory=dict)
    base: list[_Base] = field(default_factory=list)


#: Rows of at least this many characters on average are joined straight into Arrow memory by
#: :func:`joined_strings`; shorter ones are joined in Python and converted as a list.
LONG_ROW_CHARS = 2048
#: the most text one string array holds (32-bit offsets)
MAX_STRING_BYTES = 2**31 - 1


def joined_strings(rows: list[str | tuple[str, ...]], order: list[int]) -> pa.Array:
    """A string array whose value ``i`` is ``rows[order[i]]``: a string, or parts to be joined.

    Long rows (few-shot inputs: exemplars shared by several rows of a unit, then the query) are
    copied once, straight into one buffer of Arrow's memory pool sized exactly, each shared part
    encoded once. Joining them in Python and converting the list copied every row's text twice
    and grew Arrow's buffer by doubling: for 555 rows of ~18 kB made of 5 parts of ~3.7 kB
    (a unit of the benchmark's few-shot rows), 3.6 ms against 2.1 ms, in isolation. Short rows
    keep the list conversion, whose per-row cost is lower than a part's Python-level copy.
    """
    chars = sum(len(r) if isinstance(r, str) else sum(map(len, r)) for r in rows)
    if not order or chars < LONG_ROW_CHARS * len(rows) or chars > MAX_STRING_BYTES:
        # short rows; or more than one array holds, which the conversion splits into chunks
        return pa.array([_joined(rows[i]) for i in order], pa.string())
    ordered = [(r,) if isinstance(r, str) else r for r in map(rows.__getitem__, order)]
    flat = [p for r in ordered for p in r]
    encoded: dict[int, bytes] = {}  # id of a part (alive in rows): its UTF-8
    data_parts = []
    for p in flat:
        b = encoded.get(id(p))
        if b is None:
            b = encoded[id(p)] = p.encode()
        data_parts.append(b)
    ends = np.cumsum(np.fromiter(map(len, data_parts), dtype=np.int64, count=len(flat)))
    total = int(ends[-1])
    if total > MAX_STRING_BYTES:
        return pa.array([_joined(rows[i]) for i in order], pa.string())
    counts = np.fromiter(map(len, ordered), dtype=np.int64, count=len(order))
    offsets = np.zeros(len(order) + 1, dtype=np.int32)
    offsets[1:][counts > 0] = ends[np.cumsum(counts)[counts > 0] - 1]
    np.maximum.accumulate(offsets, out=offsets)  # a row of no parts ends where the last did
    data = pa.allocate_buffer(total)
    view = memoryview(data).cast("B")
    start = 0
    for part, end in zip(data_parts, ends.tolist(), strict=True):
        view[start:end] = part
        start = end
    return pa.StringArray.from_buffers(len(order), pa.py_buffer(offsets), data)


def _joined(row: str | tuple[str, ...]) -> str:
    return row if isinstance(row, str) else "".join(row)


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_ids(keys: np.ndarray) -> pa.StringArray:
    """uint64 ids as 16 lowercase hex digits each (``format(k, "016x")``), built in numpy."""
    n = len(keys)
    digits = keys.astype(">u8").view(np.uint8).reshape(n, 8)
    text = np.empty((n, 16), dtype=np.uint8)
    text[:, 0::2] = _HEX[digits >> 4]
    text[:, 1::2] = _HEX[digits & 15]
    offsets = np.arange(0, 16 * (n + 1), 16, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))


def load_tokenizer(path: str):
    """A text -> token count function from a tokenizer.json file or a tokenizer folder."""
    p = Path(path)
    file = p if p.is_file() else p / "tokenizer.json"
    try:
        if file.is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(file))
            return lambda text: len(tok.encode(text, add_special_tokens=False).ids)
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)  # never its .py files
        return lambda text: len(hf(text, add_special_tokens=False)["input_ids"])
    except ImportError as exc:
        raise CompileError(
            "formats.max_length in tokens needs the tokenizers package",
            hint="pip install 'flanmix[train]'",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a broken tokenizer is the spec's problem
        raise CompileError(
            f"cannot load the tokenizer {path}: {type(exc).__name__}: {exc}",
            location=Location(file=path, field="formats.max_length.tokenizer"),
        ) from exc


def _target_error(
    ct: CompiledTemplate, split: str, index: int, target: str, choices
) -> CompileError:
    return CompileError(
        f"target {target!r} is not one of the answer choices {list(choices)!r} on {split} row {index}",
        location=ct.location.with_(field="target", row=index),
        hint="the target of a template with answer_choices must render to one of the choices",
    )


class Row(NamedTuple):
    """One row of a shard, in the column order of :data:`flanmix.mixture.SCHEMA` (checked below)."""

    inputs: str
    targets: str
    task: str
    cluster: str
    template_id: str  # full id: task.template
    inverted: bool
    format: str  # zs_opt | zs_noopt | fs_opt | fs_noopt | cot | fs_cot
    options: list[str] | None  # answer options as shown (None: generation)
    answer_index: int | None  # index of the target in options
    metrics: list[str] | None  # eval only
    references: list[str] | None  # eval only: every gold answer, target first
    source_split: str
    source_index: int
    example_id: str


#: Column names of every shard, from the one Arrow schema.
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
if Row._fields != COLUMNS:  # pragma: no cover - a programming error, caught at import
    raise ImportError(f"flanmix.rows.Row fields {Row._fields} differ from SCHEMA {COLUMNS}")


def sorted_table(cols: dict[str, list]) -> pa.Table:
    """Columns (lists) as one table in ``example_id`` order, ties in their order. The lists are
    ordered as lists (moving references, not text) and converted one at a time, each dropped from
    ``cols`` once converted: the text is held about once, not twice."""
    import pyarrow.compute as pc

    order = pc.sort_indices(pa.array(cols["example_id"], pa.string())).to_numpy().tolist()
    arrays = []
    for column in SCHEMA:
        values = cols.pop(column.name)
        arrays.append(pa.array([values[i] for i in order], column.type))
        del values
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _columns(rows: list[Row]) -> dict[str, list]:
    """Rows to columns; one transpose in C instead of 14 appends a row."""
    if not rows:
        return {c: [] for c in COLUMNS}
    return {name: list(col) for name, col in zip(COLUMNS, zip(*rows, strict=True), strict=True)}
