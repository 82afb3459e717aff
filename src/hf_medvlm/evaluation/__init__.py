"""Evaluation: LLaVA-Med-style medical VQA scores, benchmark loaders and runs, and report-generation scoring.

The metrics are also `evaluate` modules: `evaluate.load(MEDVQA_METRIC_PATH)` and `evaluate.load(REPORT_METRIC_PATH)`.
Importing this subpackage loads no scoring library and no model code; those load on first use.
"""

import importlib

from .metrics import MEDVQA_METRIC_PATH, REPORT_METRIC_PATH, normalize_answer, report_metrics, vqa_metrics

_LAZY = {
    "evaluate_model": "runner",
    "load_benchmark": "benchmarks",
    "generate_reports": "report_generation",
    "judge_reports": "report_generation",
    "parse_judgement": "report_generation",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MEDVQA_METRIC_PATH",
    "REPORT_METRIC_PATH",
    "normalize_answer",
    "report_metrics",
    "vqa_metrics",
    *_LAZY,
]
