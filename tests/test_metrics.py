"""Hand-worked checks of the VQA and report-generation metrics and of their `evaluate` modules."""

import ast
import math
import shutil
from pathlib import Path

import pytest

from hf_medvlm.evaluation import (
    MEDVQA_METRIC_PATH,
    REPORT_METRIC_PATH,
    normalize_answer,
    report_metrics,
    vqa_metrics,
)


def closed(prediction, reference):
    return vqa_metrics([prediction], [reference], ["closed"])["closed_accuracy"]


def single(prediction, reference, answer_type="open"):
    return vqa_metrics([prediction], [reference], [answer_type])


# ---- normalisation


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  Left-sided,   PLEURAL effusion?! ", "left sided pleural effusion"),
        ("\u201cYes\u201d.", "yes"),  # Unicode quotes are punctuation too
        ("2.5 cm", "2 5 cm"),
        ("The right kidney", "the right kidney"),  # articles are kept
        ("...", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# ---- closed questions


def test_closed_answer_containing_ground_truth_is_a_hit():
    assert closed("Yes, there is a fracture.", "yes") == 100.0


def test_closed_wrong_answer_is_a_miss():
    assert closed("no", "yes") == 0.0


@pytest.mark.parametrize(
    "prediction, reference, hit",
    [
        ("NO.", "no", True),
        ("nodule seen", "no", False),  # whole words only
        ("not present", "no", False),
        ("I don't know", "no", False),  # "know" is not "no"; "don't" -> "don t"
        ("yes and no", "yes", True),  # both words present: a hit for either reference
        ("yes and no", "no", True),
        ("", "yes", False),
        ("The left side.", "left", True),  # closed questions with non yes/no answers use the same rule
        ("in the left lung", "left lung", True),
        ("lung, left", "left lung", False),  # multi-word references must appear in order
    ],
)
def test_closed_edge_cases(prediction, reference, hit):
    assert closed(prediction, reference) == (100.0 if hit else 0.0)


def test_closed_misses_stay_in_the_denominator():
    result = vqa_metrics(["yes", "no", "maybe"], ["yes", "yes", "yes"], ["closed"] * 3)
    assert result["closed_accuracy"] == pytest.approx(100 / 3)
    assert result["num_closed"] == 3


# ---- open questions and token scores


def test_open_recall_two_of_three_tokens():
    result = single("opacity in the left lobe", "left lower lobe")
    assert result["open_recall"] == pytest.approx(200 / 3)
    assert round(result["open_recall"], 2) == 66.67
    assert result["num_open"] == 1 and result["num_closed"] == 0
    assert math.isnan(result["closed_accuracy"])


def test_recall_counts_repeated_tokens_once_each():
    # reference has "left" once: a prediction repeating it still recalls 1 of 2 tokens
    assert single("left left left", "left lung")["recall"] == pytest.approx(50.0)


def test_exact_match():
    assert single("Right kidney.", "right kidney")["exact_match"] == 100.0
    assert single("the right kidney", "right kidney")["exact_match"] == 0.0


def test_token_f1_by_hand():
    # 4 predicted tokens, 3 reference tokens, all 3 reference tokens found: P = 3/4, R = 1, F1 = 2PR/(P+R) = 6/7
    result = single("mass in left lung", "left lung mass")
    assert result["precision"] == pytest.approx(75.0)
    assert result["recall"] == pytest.approx(100.0)
    assert result["f1"] == pytest.approx(600 / 7)
    # one of two tokens on each side: P = R = F1 = 1/2
    result = single("right lung", "left lung")
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((50.0, 50.0, 50.0))
    # an empty prediction scores zero everywhere
    result = single("", "left lung")
    assert [result[k] for k in ("precision", "recall", "f1", "exact_match", "bleu_1")] == [0.0] * 5


# ---- BLEU


def test_bleu_by_hand():
    # unigram precision 2/3; candidate (3) longer than reference (2) so no brevity penalty
    result = single("the left lung", "left lung")
    assert result["bleu_1"] == pytest.approx(200 / 3)
    # bigrams "the left", "left lung": 1 of 2 match -> sqrt(2/3 * 1/2)
    assert result["bleu_2"] == pytest.approx(100 * math.sqrt(1 / 3))
    # one token against two: precision 1, brevity penalty exp(1 - 2/1); higher orders do not exist in the candidate
    result = single("lung", "left lung")
    for n in range(1, 5):
        assert result[f"bleu_{n}"] == pytest.approx(100 * math.exp(-1))


def test_bleu_single_word_answer_and_smoothing():
    assert [single("Yes.", "yes", "closed")[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx([100.0] * 4)
    # p1 = 1/3; no bigram (of 2) or trigram (of 1) matches: exp smoothing gives 1/(2*2) and 1/(4*1)
    assert single("yes there is", "yes")["bleu_3"] == pytest.approx(100 * (1 / 3 * 1 / 4 * 1 / 4) ** (1 / 3))


# ---- mixed lists


MIXED = dict(
    predictions=["Yes, there is a fracture.", "no", "No.", "left lung", "opacity in the left lobe"],
    references=["yes", "yes", "no", "left lung", "left lower lobe"],
    answer_types=["CLOSED", "closed", "yes/no", "OPEN", "open"],
)


def test_mixed_list_counts_and_averages():
    result = vqa_metrics(**MIXED)
    assert result["num_closed"] == 3 and result["num_open"] == 2
    assert result["closed_accuracy"] == pytest.approx(200 / 3)  # hit, miss, hit
    assert result["open_recall"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result["exact_match"] == pytest.approx(100 * 2 / 5)  # "no" == "no", "left lung" == "left lung"
    assert result["recall"] == pytest.approx(100 * (1 + 0 + 1 + 1 + 2 / 3) / 5)
    # precisions: 1/5, 0, 1, 1, 2/5
    assert result["precision"] == pytest.approx(100 * (1 / 5 + 0 + 1 + 1 + 2 / 5) / 5)
    assert all(0.0 <= v <= 100.0 for k, v in result.items() if not k.startswith("num_"))


# ---- validation


@pytest.mark.parametrize(
    "spelling", ["OPEN", "Open", " open-ended ", "open_ended", "closed", "Close", "YES/NO", "yes_no", "yesno"]
)
def test_answer_type_spellings(spelling):
    assert vqa_metrics(["yes"], ["yes"], [spelling])["exact_match"] == 100.0


def test_unknown_answer_type_names_value_and_index():
    with pytest.raises(ValueError, match=r"'maybe' at index 1"):
        vqa_metrics(["yes", "no"], ["yes", "no"], ["closed", "maybe"])
    with pytest.raises(ValueError, match=r"None at index 0"):
        vqa_metrics(["yes"], ["yes"], [None])


def test_length_mismatch_and_empty_input():
    with pytest.raises(ValueError, match=r"predictions \(2\), references \(1\) and answer_types \(2\)"):
        vqa_metrics(["a", "b"], ["a"], ["open", "open"])
    with pytest.raises(ValueError, match="no predictions"):
        vqa_metrics([], [], [])
    with pytest.raises(ValueError, match=r"predictions \(1\) and references \(2\)"):
        report_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no predictions"):
        report_metrics([], [])


def test_bad_values():
    with pytest.raises(ValueError, match=r"references\[0\] is empty"):
        vqa_metrics(["yes"], ["?"], ["closed"])
    with pytest.raises(TypeError, match=r"predictions\[0\]"):
        vqa_metrics([None], ["yes"], ["closed"])
    assert vqa_metrics(["2"], [2], ["open"])["exact_match"] == 100.0  # numeric answers are compared as text


# ---- report generation

REPORT = "the heart size is normal and the lungs are clear"


def test_report_identical_and_disjoint():
    same = report_metrics([REPORT, "no acute cardiopulmonary process"], [REPORT, "no acute cardiopulmonary process"])
    assert same == pytest.approx({k: 100.0 for k in same})
    assert set(same) == {"bleu", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_1", "rouge_2", "rouge_l"}
    disjoint = report_metrics(["small left effusion"], [REPORT])
    assert disjoint == {k: 0.0 for k in same}


def test_report_partial_overlap_against_the_libraries():
    from rouge_score import rouge_scorer
    from sacrebleu import corpus_bleu

    predictions = ["no acute findings", "The heart is normal in size and lungs are clear."]
    references = ["no acute cardiopulmonary findings", "Heart size is normal. The lungs are clear."]
    result = report_metrics(predictions, references)

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    assert rouge_l[0] == pytest.approx(6 / 7)  # LCS 3: P = 1, R = 3/4
    assert result["rouge_l"] == pytest.approx(100 * sum(rouge_l) / 2)
    assert result["bleu"] == pytest.approx(corpus_bleu(predictions, [references], lowercase=True).score)
    assert 0 < result["bleu"] < result["bleu_1"] < 100


def test_report_case_handling():
    upper = "No Acute Cardiopulmonary Process Seen"
    assert report_metrics([upper], [upper.lower()])["bleu"] == pytest.approx(100.0)
    assert report_metrics([upper], [upper.lower()], lowercase=False)["bleu"] == 0.0


# ---- evaluate modules


@pytest.fixture(scope="module")
def evaluate_lib():
    return pytest.importorskip("evaluate")


def test_medvqa_evaluate_module_matches_function(evaluate_lib):
    metric = evaluate_lib.load(MEDVQA_METRIC_PATH, keep_in_memory=True)
    assert metric.compute(**MIXED) == vqa_metrics(**MIXED)


def test_report_evaluate_module_matches_function(evaluate_lib):
    predictions, references = ["no acute findings", REPORT], ["no acute cardiopulmonary findings", REPORT]
    metric = evaluate_lib.load(REPORT_METRIC_PATH, keep_in_memory=True)
    assert metric.compute(predictions=predictions, references=references) == report_metrics(predictions, references)
    assert metric.compute(predictions=predictions, references=references, use_stemmer=True) == report_metrics(
        predictions, references, use_stemmer=True
    )


def test_evaluate_module_works_when_copied(evaluate_lib, tmp_path):
    folder = tmp_path / "medvqa_metric"
    shutil.copytree(MEDVQA_METRIC_PATH, folder, ignore=shutil.ignore_patterns("__pycache__"))
    metric = evaluate_lib.load(str(folder), keep_in_memory=True)
    for part in (slice(0, 2), slice(2, None)):  # streamed in two batches
        metric.add_batch(**{key: values[part] for key, values in MIXED.items()})
    assert metric.compute() == vqa_metrics(**MIXED)


@pytest.mark.parametrize("name", ["medvqa_metric", "report_metric"])
def test_scripts_are_self_contained(name):
    tree = ast.parse((Path(MEDVQA_METRIC_PATH).parent / name / f"{name}.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    allowed = {"math", "string", "unicodedata", "collections", "datasets", "evaluate", "sacrebleu", "rouge_score"}
    assert {module.split(".")[0] for module in imported} <= allowed  # no hf_medvlm: the folder works on its own


def test_evaluation_package_imports_no_scoring_library_eagerly():
    package = Path(MEDVQA_METRIC_PATH).parent
    for filename in ("__init__.py", "metrics.py"):
        tree = ast.parse((package / filename).read_text())
        top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = {alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)}
        assert not names & {"evaluate", "datasets", "sacrebleu", "rouge_score", "torch", "transformers"}
