"""Backwards-compatible names only: planning moved to :mod:`flanmix.plan`, rendering a unit to
:mod:`flanmix.rows`. New code imports from those modules; this shim keeps old imports working."""

from __future__ import annotations

from .plan import (
    UNIT_ROWS,
    Plan,
    TaskPlan,
    Unit,
    plan_mixture,
    resolve_holdout,
    spec_source_uses,
)
from .rows import (
    COLUMNS,
    REDRAWS,
    Row,
    UnitRenderer,
    WorkerContext,
    choose_templates,
    example_id,
    load_tokenizer,
)
from .sampling import options_block

__all__ = [
    "COLUMNS",
    "REDRAWS",
    "UNIT_ROWS",
    "Plan",
    "Row",
    "TaskPlan",
    "Unit",
    "UnitRenderer",
    "WorkerContext",
    "choose_templates",
    "example_id",
    "load_tokenizer",
    "options_block",
    "plan_mixture",
    "resolve_holdout",
    "spec_source_uses",
]
