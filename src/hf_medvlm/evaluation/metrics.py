"""Scores for medical VQA and radiology report generation.

The implementations live in the `evaluate` module scripts next to this file, which stay importable without
hf_medvlm; these wrappers load them on first use, so `evaluate.load(MEDVQA_METRIC_PATH).compute(...)` and
`vqa_metrics(...)` run the same code.
"""

import importlib
from pathlib import Path

_HERE = Path(__file__).resolve().parent
MEDVQA_METRIC_PATH = str(_HERE / "medvqa_metric")
REPORT_METRIC_PATH = str(_HERE / "report_metric")


def _script(name):
    # the script folders are namespace subpackages; importing them pulls in evaluate, hence the lazy load
    return importlib.import_module(f"{__package__}.{name}.{name}")


def normalize_answer(text):
    """Lowercase, replace every punctuation character (ASCII or Unicode P*) with a space, collapse whitespace."""
    return _script("medvqa_metric").normalize_answer(text)


def vqa_metrics(predictions, references, answer_types):
    """LLaVA-Med-style medical VQA scores, as percentages (0-100).

    Normalisation (predictions and references): lowercase; every punctuation character (ASCII `string.punctuation`
    or Unicode category P*) becomes a space; whitespace runs collapse to one space, stripped; tokens split on spaces.

    - `answer_types[i]`: "closed" / "close" / "yes/no" / "yes_no" / "yesno" or "open" / "open-ended" / "open_ended",
      case-insensitive; anything else raises ValueError naming the value and index.
    - `closed_accuracy`: a closed question is a hit when the normalised reference occurs as whole word(s) in the
      normalised prediction ("Yes, there is a fracture." hits "yes"; "nodule" and "not" do not contain "no"). A
      prediction with both "yes" and "no" hits either reference, as in LLaVA-Med; misses stay in the denominator.
    - `open_recall`: mean over open questions of the share of reference tokens present in the prediction (multiset).
    - `exact_match`, `precision`, `recall`, `f1`: normalised string equality and token multiset overlap, all questions.
    - `bleu_1`..`bleu_4`: mean sacrebleu sentence BLEU up to order n on normalised tokens, all questions, with
      effective order (orders longer than the prediction are left out) and "exp" smoothing.
    - `num_closed`, `num_open`: counts; a rate over zero questions is NaN.

    Raises ValueError for empty input, lists of different lengths, or a reference empty after normalisation.
    """
    return _script("medvqa_metric").vqa_metrics(predictions, references, answer_types)


def report_metrics(predictions, references, lowercase=True, use_stemmer=False):
    """Report-generation scores, as percentages (0-100).

    `bleu` and `bleu_1`..`bleu_4`: sacrebleu corpus BLEU (13a tokenisation, lowercased unless `lowercase=False`) with
    n-grams up to order n; `bleu` is the standard 4-gram score. `rouge_1`, `rouge_2`, `rouge_l`: mean F-measure from
    the rouge-score package (`use_stemmer` passed through). Raises ValueError for empty input or different lengths.
    """
    return _script("report_metric").report_metrics(
        predictions, references, lowercase=lowercase, use_stemmer=use_stemmer
    )
