"""Evaluation metrics: LLaVA-Med-style medical VQA scores and report-generation scores.

Both are also `evaluate` modules: `evaluate.load(MEDVQA_METRIC_PATH)` and `evaluate.load(REPORT_METRIC_PATH)`.
Importing this subpackage loads no scoring library; evaluate, sacrebleu and rouge-score load on the first call.
"""

from .metrics import MEDVQA_METRIC_PATH, REPORT_METRIC_PATH, normalize_answer, report_metrics, vqa_metrics

__all__ = ["MEDVQA_METRIC_PATH", "REPORT_METRIC_PATH", "normalize_answer", "report_metrics", "vqa_metrics"]
