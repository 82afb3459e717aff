"""The fine-detail phantoms, their evaluation path, `hf-medvlm demo --quick` and `hf-medvlm bench fine-detail --quick`."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hf_medvlm import fine_detail
from hf_medvlm.evaluation.benchmarks import load_benchmark

from conftest import run_without_hf_medvlm


def _cli(*args):
    command = [shutil.which("hf-medvlm") or sys.executable, *args]
    if command[0] == sys.executable:
        command[1:1] = ["-m", "hf_medvlm.cli"]
    return subprocess.run(command, capture_output=True, text=True, timeout=1200)


def _digest(folder):
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def test_same_seed_writes_identical_files_and_another_seed_does_not(tmp_path):
    first = fine_detail.make_fine_detail_set(tmp_path / "a", train=6, test=3, seed=7, progress=False)
    fine_detail.make_fine_detail_set(tmp_path / "b", train=6, test=3, seed=7, progress=False)
    fine_detail.make_fine_detail_set(tmp_path / "c", train=6, test=3, seed=8, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    manifest = first["manifest"]
    assert manifest["questions"]["train"]["presence"] == 6 and manifest["questions"]["test"]["count"] == 3
    train_images = {row["image"] for row in manifest["slices"]["train"]}
    test_images = {row["image"] for row in manifest["slices"]["test"]}
    assert len(train_images | test_images) == 9  # no slice in both splits


def test_answers_follow_the_drawn_lesions(tmp_path):
    paths = fine_detail.make_fine_detail_set(tmp_path, train=8, test=8, seed=3, progress=False)["paths"]
    manifest = json.loads(paths["manifest"].read_text())
    lesions = {row["image"]: row["lesions"] for split in ("train", "test") for row in manifest["slices"][split]}
    for line in paths["test"].read_text().splitlines():
        row = json.loads(line)
        found = lesions[row["image"]]
        expected = {
            "presence": "yes" if found else "no",
            "count": fine_detail.COUNT_WORDS[len(found)],
            "quadrant": found[0]["quadrant"] if len(found) == 1 else None,
        }[row["kind"]]
        assert row["answer"] == expected
        for lesion in found:  # the quadrant names agree with the pixel position
            upper, left = lesion["y"] < 144, lesion["x"] < 144
            assert lesion["quadrant"] == f"{'upper' if upper else 'lower'} {'left' if left else 'right'}"
    counts = [len(row["lesions"]) for row in manifest["slices"]["train"]]
    assert counts.count(0) == 4  # presence is balanced
    conversation = json.loads(paths["conversations"].read_text().splitlines()[1])
    assert [m["role"] for m in conversation["messages"]][:2] == ["user", "assistant"]


def _ring_mean_and_lesion_pattern(picture, lesion, factor):
    """Mean absolute deviation from the local mean inside the lesion disc, at full size / `factor`."""
    size = picture.width // factor
    small = np.asarray(picture.resize((size, size), Image.BOX), dtype=float)
    y, x, r = lesion["y"] / factor, lesion["x"] / factor, max(lesion["radius"] / factor, 1.0)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    inside = (yy - y) ** 2 + (xx - x) ** 2 <= (0.7 * r) ** 2
    ring = ((yy - y) ** 2 + (xx - x) ** 2 <= (2.5 * r) ** 2) & ((yy - y) ** 2 + (xx - x) ** 2 > (1.5 * r) ** 2)
    # neighbour differences: the pixel-pitch pattern shows as a large one, smooth texture as a small one
    detail = np.abs(np.diff(small, axis=1))
    return detail[inside[:, 1:]].mean(), detail[ring[:, 1:]].mean()


def test_lesions_are_plain_at_full_size_and_vanish_at_the_base_scale():
    picture, lesions = fine_detail.phantom_slice(seed=0, index=5, size=288, lesions=3)
    assert len(lesions) == 3 and picture.size == (288, 288) and picture.mode == "L"
    for lesion in lesions:
        inside, around = _ring_mean_and_lesion_pattern(picture, lesion, 1)
        assert inside > 5 * around  # at full resolution the focus stands out from the tissue around it
        inside, around = _ring_mean_and_lesion_pattern(picture, lesion, 3)
        assert inside < 2 * around  # averaged to the base scale it is tissue-like


def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(ValueError, match="size >= 96"):
        fine_detail.phantom_slice(0, 0, size=64)
    with pytest.raises(ValueError, match="0 to 3 lesions"):
        fine_detail.phantom_slice(0, 0, lesions=4)
    with pytest.raises(ValueError, match="at least one"):
        fine_detail.make_fine_detail_set(tmp_path, train=0)
    with pytest.raises(ValueError, match="generated locally"):
        load_benchmark("fine-detail")


def test_the_evaluation_loader_keeps_ids_and_splits_open_from_closed(tmp_path):
    result = _cli("data", "fine-detail", str(tmp_path), "--train", "1", "--test", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--dataset fine-detail" in result.stdout
    paths = {"test": tmp_path / "test.jsonl"}
    dataset = load_benchmark("fine_detail", "test", data=paths["test"])
    rows = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    assert dataset["id"] == [row["id"] for row in rows]
    kinds = {row["id"]: row["kind"] for row in rows}
    for record in dataset:
        assert record["answer_type"] == ("closed" if kinds[record["id"]] == "presence" else "open")
        assert record["image"].size == (288, 288)


def test_scores_by_kind_against_hand_counted_answers():
    records = [
        {"id": "0001-presence", "answer": "yes", "prediction": "Yes."},
        {"id": "0002-presence", "answer": "no", "prediction": "yes"},
        {"id": "0001-count", "answer": "two", "prediction": "two"},
        {"id": "0002-count", "answer": "none", "prediction": "one"},
        {"id": "0003-quadrant", "answer": "upper left", "prediction": "upper right"},
    ]
    scores = fine_detail.scores_by_kind(records)
    assert scores["presence"] == {"questions": 2, "accuracy": 50.0}
    assert scores["count"] == {"questions": 2, "recall": 50.0, "exact_match": 50.0}
    assert scores["quadrant"] == {"questions": 1, "recall": 50.0, "exact_match": 0.0}
    table = fine_detail.format_scores({"arm": scores})
    assert "| arm | 50.0 | 50.0 | 50.0 | 50.0 | 0.0 |" in table
    baseline = fine_detail.constant_baselines([{"kind": "presence", "answer": a} for a in ("yes", "no", "no")])
    assert baseline["presence"]["answer"] == "no" and baseline["presence"]["score"] == pytest.approx(200 / 3)


def test_demo_quick_runs_end_to_end_and_its_export_loads_in_a_fresh_process(tmp_path):
    result = _cli("demo", "--quick", "--no-progress", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RANDOMLY INITIALISED" in result.stdout and "presence accuracy" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reloaded_with_remote_code"] and report["reloaded_answer_matches"]
    assert set(report["timings_s"]) >= {"stage1", "stage2", "evaluate", "export", "reload_and_answer"}
    assert report["by_kind"]["presence"]["questions"] == 4
    # the stages really ran through the training code: their records are in the merged checkpoint
    config = json.loads((tmp_path / "stage2_merged" / "config.json").read_text())
    assert config["training_stage"]["stage"] == "lora" and config["training_stage"]["previous"] == ["alignment"]
    export = tmp_path / "export"
    assert (export / "README.md").read_text().count("fine-detail") >= 1
    run_without_hf_medvlm(
        f"""
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(export)!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(export)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert model.config.scales == [96, 192, 288], model.config.scales
        assert model.config.training_stage["stage"] == "lora"
        """,
        cwd=tmp_path,
    )


def test_bench_fine_detail_quick_reports_both_arms_on_the_same_questions(tmp_path):
    result = _cli("bench", "fine-detail", "--quick", "--no-progress", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "fine_detail.json").read_text())
    arms = report["arms"]
    assert list(arms) == ["1 scale [96]", "3 scales [96, 192, 288]"]
    questions = {
        name: {kind: entry["questions"] for kind, entry in arm["by_kind"].items()} for name, arm in arms.items()
    }
    assert questions["1 scale [96]"] == questions["3 scales [96, 192, 288]"]
    for name, scales in (("scales-1", [96]), ("scales-3", [96, 192, 288])):
        config = json.loads((tmp_path / name / "stage2_merged" / "config.json").read_text())
        assert config["scales"] == scales
    for arm in arms.values():  # the probe saw the same slices through each arm's own tower
        assert arm["probe"]["train_slices"] == 8 and arm["probe"]["test_slices"] == 4
        assert 0.0 <= arm["probe"]["test_accuracy"] <= 100.0
    markdown = (tmp_path / "fine_detail.md").read_text()
    assert "| 1 scale [96] |" in markdown and "| 3 scales [96, 192, 288] |" in markdown
    assert "most common answer" in markdown and "Linear probe" in markdown


@pytest.mark.slow
def test_bench_fine_detail_reproduces_with_the_same_seed(tmp_path):
    for name in ("first", "second"):
        result = _cli("bench", "fine-detail", "--quick", "--no-progress", "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr[-3000:]
    first, second = (json.loads((tmp_path / name / "fine_detail.json").read_text()) for name in ("first", "second"))
    for arm in first["arms"]:
        assert first["arms"][arm]["by_kind"] == second["arms"][arm]["by_kind"]
        assert first["arms"][arm]["losses"] == second["arms"][arm]["losses"]
        for run in ("first", "second"):
            assert (tmp_path / run / f"scales-{1 if '1 scale' in arm else 3}" / "eval").is_dir()
    predictions = [
        (tmp_path / name / "scales-3" / "eval" / "fine-detail-test" / "predictions.jsonl").read_text()
        for name in ("first", "second")
    ]
    assert predictions[0] == predictions[1]
