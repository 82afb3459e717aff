"""Lexical scores for radiology report generation (BLEU, ROUGE), as an `evaluate` metric module.

Self-contained (needs only evaluate, datasets, sacrebleu and rouge-score), so the folder can be copied or pushed to the
Hub as is.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

_CITATION = """\
@inproceedings{post-2018-call,
  title={A Call for Clarity in Reporting {BLEU} Scores},
  author={Post, Matt},
  booktitle={Proceedings of the Third Conference on Machine Translation},
  year={2018}
}
@inproceedings{lin-2004-rouge,
  title={{ROUGE}: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out},
  year={2004}
}
"""

_DESCRIPTION = """\
Report-generation scores: sacrebleu corpus BLEU (13a tokenisation) and the mean ROUGE-1/2/L F-measure of the
rouge-score package, one reference report per generated report.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list` of `str`): generated reports.
    references (`list` of `str`): reference reports.
    lowercase (`bool`, default True): lowercase before BLEU (rouge-score always lowercases).
    use_stemmer (`bool`, default False): Porter-stem tokens before ROUGE.
Returns (percentages, 0-100):
    bleu: corpus BLEU with n-grams up to 4 (sacrebleu's standard score; equal to bleu_4).
    bleu_1 .. bleu_4: corpus BLEU with n-grams up to order n (cumulative, uniform weights).
    rouge_1, rouge_2, rouge_l: mean per-report F-measure.
Examples:
    >>> metric = evaluate.load("path/to/report_metric")
    >>> metric.compute(predictions=["no acute findings"], references=["no acute findings"])["rouge_l"]
    100.0
"""


def report_metrics(predictions, references, lowercase=True, use_stemmer=False):
    """Scores generated reports against references; see the module description for the returned keys."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions ({len(predictions)}) and references ({len(references)}) must have the same length"
        )
    if not predictions:
        raise ValueError("no predictions to score")
    for name, texts in (("predictions", predictions), ("references", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{name}[{i}] must be a string, got {type(text).__name__}")

    corpus = [references]  # sacrebleu takes reference streams, one per reference set
    bleu = {
        n: BLEU(max_ngram_order=n, lowercase=lowercase).corpus_score(predictions, corpus).score for n in range(1, 5)
    }
    result = {"bleu": bleu[4], **{f"bleu_{n}": score for n, score in bleu.items()}}

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    scores = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    for key, name in (("rouge1", "rouge_1"), ("rouge2", "rouge_2"), ("rougeL", "rouge_l")):
        result[name] = 100.0 * sum(score[key].fmeasure for score in scores) / len(scores)
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReportMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=[
                "https://github.com/mjpost/sacrebleu",
                "https://github.com/google-research/google-research/tree/master/rouge",
            ],
        )

    def _compute(self, predictions, references, lowercase=True, use_stemmer=False):
        return report_metrics(predictions, references, lowercase=lowercase, use_stemmer=use_stemmer)
