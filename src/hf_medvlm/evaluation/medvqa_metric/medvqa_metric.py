"""Medical VQA scores following the LLaVA-Med protocol, as an `evaluate` metric module.

Self-contained (needs only evaluate, datasets and sacrebleu), so the folder can be copied or pushed to the Hub as is.
"""

import math
import string
import unicodedata
from collections import Counter

import datasets
import evaluate
from sacrebleu.metrics import BLEU

_CITATION = """\
@article{li2023llavamed,
  title={LLaVA-Med: Training a Large Language-and-Vision Assistant for Biomedicine in One Day},
  author={Li, Chunyuan and Wong, Cliff and Zhang, Sheng and Usuyama, Naoto and Liu, Haotian and Yang, Jianwei
          and Naumann, Tristan and Poon, Hoifung and Gao, Jianfeng},
  journal={arXiv preprint arXiv:2306.00890},
  year={2023}
}
"""

_DESCRIPTION = """\
Medical VQA scores in the style of LLaVA-Med's evaluation (VQA-RAD, SLAKE, PathVQA): accuracy on closed (yes/no)
questions, recall on open questions, and exact match, token precision/recall/F1 and BLEU-1..4 over all questions.

Normalisation, applied to predictions and references alike:
  1. lowercase;
  2. replace every punctuation character (ASCII `string.punctuation` or any Unicode category P*) with a space;
  3. collapse whitespace runs to one space and strip; tokens are the space-separated words.

Closed question: a hit when the normalised reference occurs as whole word(s) in the normalised prediction, so
"Yes, there is a fracture." is a hit for "yes", and "no" is not found inside "nodule" or "not". As in LLaVA-Med, a
prediction containing both "yes" and "no" is a hit for either reference. Every closed question counts in the
denominator (LLaVA-Med's script dropped wrong yes/no answers from it).

Open question: recall = share of reference tokens found among the prediction tokens (multiset overlap).
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `str`): ground-truth answers.
    answer_types (`list` of `str`): per question, "closed" (also "close", "yes/no", "yes_no", "yesno") or "open"
        (also "open-ended", "open_ended"); case-insensitive.
Returns (percentages, 0-100):
    closed_accuracy: share of closed questions answered correctly (NaN without closed questions).
    open_recall: mean token recall over open questions (NaN without open questions).
    exact_match: normalised prediction equals normalised reference, all questions.
    precision, recall, f1: token multiset overlap, all questions (0 for an empty prediction).
    bleu_1 .. bleu_4: mean sacrebleu sentence BLEU up to n-grams of order n, all questions, on normalised
        whitespace tokens, with effective order (orders longer than the prediction are left out, so a correct
        one-word answer scores 100) and "exp" smoothing (the k-th order without a match counts 1 / 2**k matches).
    num_closed, num_open: counts (int).
Examples:
    >>> metric = evaluate.load("path/to/medvqa_metric")
    >>> scores = metric.compute(predictions=["Yes, there is a fracture."], references=["yes"], answer_types=["closed"])
    >>> scores["closed_accuracy"]
    100.0
"""

CLOSED_TYPES = frozenset({"closed", "close", "yes/no", "yes_no", "yesno"})
OPEN_TYPES = frozenset({"open", "open-ended", "open_ended"})

# one scorer per maximum order; sentence-level BLEU needs effective order to be meaningful for short answers
_BLEU = {n: BLEU(max_ngram_order=n, tokenize="none", smooth_method="exp", effective_order=True) for n in range(1, 5)}


def _is_punctuation(char):
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def normalize_answer(text):
    """Lowercase, replace punctuation with spaces and collapse whitespace (see the module description)."""
    return " ".join("".join(" " if _is_punctuation(c) else c for c in text.lower()).split())


def _as_text(value, name, index):
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # numeric answers ("2", "3.5") appear in VQA-RAD and SLAKE
    raise TypeError(f"{name}[{index}] must be a string, got {type(value).__name__}")


def _answer_type(value, index):
    kind = value.strip().lower() if isinstance(value, str) else None
    if kind in CLOSED_TYPES:
        return "closed"
    if kind in OPEN_TYPES:
        return "open"
    raise ValueError(
        f"unknown answer type {value!r} at index {index}; expected one of {sorted(CLOSED_TYPES | OPEN_TYPES)}"
    )


def _contains_words(tokens, words):
    n = len(words)
    return any(tokens[i : i + n] == words for i in range(len(tokens) - n + 1))


def _token_scores(pred_tokens, ref_tokens):
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    precision = common / len(pred_tokens)
    recall = common / len(ref_tokens)
    return precision, recall, 2 * precision * recall / (precision + recall)


def _mean_percent(values):
    return 100.0 * sum(values) / len(values) if values else math.nan


def vqa_metrics(predictions, references, answer_types):
    """Scores a list of VQA answers; see the module description for the rules and returned keys."""
    predictions, references, answer_types = list(predictions), list(references), list(answer_types)
    if not (len(predictions) == len(references) == len(answer_types)):
        raise ValueError(
            f"predictions ({len(predictions)}), references ({len(references)}) and answer_types "
            f"({len(answer_types)}) must have the same length"
        )
    if not predictions:
        raise ValueError("no predictions to score")

    closed_hits, open_recalls = [], []
    exact, precisions, recalls, f1s = [], [], [], []
    bleus = {n: [] for n in _BLEU}
    for i, (prediction, reference, answer_type) in enumerate(zip(predictions, references, answer_types)):
        kind = _answer_type(answer_type, i)
        pred = normalize_answer(_as_text(prediction, "predictions", i))
        ref = normalize_answer(_as_text(reference, "references", i))
        if not ref:
            raise ValueError(f"references[{i}] is empty after normalisation: {reference!r}")
        pred_tokens, ref_tokens = pred.split(), ref.split()

        precision, recall, f1 = _token_scores(pred_tokens, ref_tokens)
        if kind == "closed":
            closed_hits.append(float(_contains_words(pred_tokens, ref_tokens)))
        else:
            open_recalls.append(recall)
        exact.append(float(pred == ref))
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(f1)
        for n, scorer in _BLEU.items():
            bleus[n].append(scorer.sentence_score(pred, [ref]).score / 100.0 if pred else 0.0)

    result = {
        "closed_accuracy": _mean_percent(closed_hits),
        "open_recall": _mean_percent(open_recalls),
        "exact_match": _mean_percent(exact),
        "precision": _mean_percent(precisions),
        "recall": _mean_percent(recalls),
        "f1": _mean_percent(f1s),
    }
    result.update({f"bleu_{n}": _mean_percent(scores) for n, scores in bleus.items()})
    result.update({"num_closed": len(closed_hits), "num_open": len(open_recalls)})
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MedVQAMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "answer_types": datasets.Value("string"),
                }
            ),
            reference_urls=["https://github.com/microsoft/LLaVA-Med"],
        )

    def _compute(self, predictions, references, answer_types):
        return vqa_metrics(predictions, references, answer_types)
