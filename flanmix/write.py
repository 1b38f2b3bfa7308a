"""Backwards-compatible names only: the compile entry point is :mod:`flanmix.compile`, the worker
jobs :mod:`flanmix.assemble`, the inspect report and plots :mod:`flanmix.report`, the dataset card
:mod:`flanmix.card`. New code imports from those modules; this shim keeps old imports working."""

from __future__ import annotations

from .card import mixture_card as card_text
from .compile import CompileJob, compile_mixture
from .plan import resolve_holdout
from .report import composition_figure, composition_report, plot_composition

__all__ = [
    "CompileJob",
    "card_text",
    "compile_mixture",
    "composition_figure",
    "composition_report",
    "plot_composition",
    "resolve_holdout",
]
