"""Benchmark loaders, resumable and multi-process VQA evaluation, report generation and the LLM judge, end to end."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from hf_medvlm import (
    LlavaMedHiResConfig,
    LlavaMedHiResForConditionalGeneration,
    LlavaMedHiResImageProcessor,
    LlavaMedHiResProcessor,
)
from hf_medvlm.evaluation import report_metrics, vqa_metrics
from hf_medvlm.evaluation.benchmarks import (
    benchmark_statistics,
    format_statistics,
    get_benchmark,
    load_benchmark,
    split_statistics,
)
from hf_medvlm.evaluation.cli import add_eval_commands, main
from hf_medvlm.evaluation.report_generation import (
    generate_reports,
    judge_reports,
    parse_judgement,
    summarize_judgements,
)
from hf_medvlm.evaluation.runner import TABLE3_REFERENCES, evaluate_model, read_jsonl, results_table

from conftest import TILE, TINY_CLIP, TINY_LLAMA, free_port

SCALES = [TILE, 2 * TILE]
BATCH = 2
NEW_TOKENS = 8
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")


def picture(seed, width=48, height=40):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_dir(smollm2_tokenizer_dir, tmp_path_factory):
    """A tiny two-scale model with the real SmolLM2 tokenizer, saved with its processor like a trained checkpoint."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    config = LlavaMedHiResConfig(
        vision_config=TINY_CLIP,
        text_config=dict(TINY_LLAMA, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scales=SCALES,
    )
    torch.manual_seed(0)
    model = LlavaMedHiResForConditionalGeneration(config).eval()
    processor = LlavaMedHiResProcessor(
        image_processor=LlavaMedHiResImageProcessor(scales=SCALES), tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
    )
    folder = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


VQA_RAD_TEST = [  # (image seed, question, answer): two questions share an image, as in VQA-RAD
    (0, "Is there a fracture?", "Yes"),
    (0, "Which bone is shown?", "femur"),
    (1, "Is the heart enlarged?", "No."),
    (2, "What imaging modality is this?", "CT"),
    (3, "Is there free air under the diaphragm?", "no"),
    (4, "Where is the lesion?", "left upper lobe"),
    (5, "Is this an MRI?", "yes"),
    (6, "What organ is abnormal?", "liver"),
    (7, "Are the kidneys normal?", "yes"),
    (8, "How many lesions are seen?", "2"),
    (9, "Is there a pneumothorax?", "no"),
    (10, "Which side is the effusion on?", "right"),
]


@pytest.fixture(scope="module")
def vqa_rad_dir(tmp_path_factory):
    """VQA-RAD in its Hub layout: data/{split}-00000-of-00001.parquet with image, question, answer."""
    folder = tmp_path_factory.mktemp("vqa_rad")
    (folder / "data").mkdir()
    for split, rows in (("test", VQA_RAD_TEST), ("train", VQA_RAD_TEST[:3])):
        table = datasets.Dataset.from_dict(
            {
                "image": [picture(seed, 40 + 4 * seed, 36) for seed, _, _ in rows],
                "question": [question for _, question, _ in rows],
                "answer": [answer for _, _, answer in rows],
            }
        ).cast_column("image", datasets.Image())
        table.to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


SLAKE_TEST = [  # SLAKE's own answer_type decides, also where the yes/no rule would not
    {"qid": 11, "img_name": "xmlab1/source.jpg", "question": "Is this a CT?", "answer": "Yes", "answer_type": "CLOSED"},
    {"qid": 12, "img_name": "xmlab1/source.jpg", "question": "Which is larger, left or right lung?",
     "answer": "Left", "answer_type": "CLOSED"},
    {"qid": 13, "img_name": "xmlab2/source.jpg", "question": "What organ is shown?", "answer": "Brain",
     "answer_type": "OPEN"},
    {"qid": 14, "img_name": "xmlab2/source.jpg", "question": "这是什么器官?", "answer": "脑",
     "answer_type": "OPEN", "q_lang": "zh"},
    {"qid": 15, "img_name": "xmlab3/source.jpg", "question": "Where is the abnormality?",
     "answer": "Right lower lung", "answer_type": "OPEN"},
    {"qid": 16, "img_name": "xmlab3/source.jpg", "question": "Does the image contain a tumour?", "answer": "No",
     "answer_type": "CLOSED"},
]


@pytest.fixture(scope="module")
def slake_dir(tmp_path_factory):
    """SLAKE in its release layout: test.json (img_name, question, answer, answer_type, q_lang) and imgs/xmlab*/."""
    folder = tmp_path_factory.mktemp("slake")
    records = [dict({"q_lang": "en", "location": "Lung", "modality": "CT"}, **record) for record in SLAKE_TEST]
    (folder / "test.json").write_text(json.dumps(records, ensure_ascii=False))
    for number in (1, 2, 3):
        (folder / "imgs" / f"xmlab{number}").mkdir(parents=True)
        picture(20 + number, 64, 48).save(folder / "imgs" / f"xmlab{number}" / "source.jpg")
    return folder


PATH_VQA_TEST = [
    ("What is present?", "metastatic carcinoma"),
    ("Is this a gross specimen?", "yes"),
    ("What does this image show?", "granulomas"),
    ("Are the glands dilated?", "no"),
]


@pytest.fixture(scope="module")
def path_vqa_dir(tmp_path_factory):
    """PathVQA as an imagefolder: test/*.jpg and test/metadata.jsonl (file_name, question, answer)."""
    folder = tmp_path_factory.mktemp("path_vqa")
    (folder / "test").mkdir()
    with open(folder / "test" / "metadata.jsonl", "w") as handle:
        for index, (question, answer) in enumerate(PATH_VQA_TEST):
            picture(40 + index, 56, 56).save(folder / "test" / f"{index}.jpg")
            handle.write(json.dumps({"file_name": f"{index}.jpg", "question": question, "answer": answer}) + "\n")
    return folder


@pytest.fixture(scope="module")
def sources(vqa_rad_dir, slake_dir, path_vqa_dir):
    return {"vqa-rad": vqa_rad_dir, "slake": slake_dir, "path-vqa": path_vqa_dir}


@pytest.fixture(scope="module")
def full_run(model_dir, sources, tmp_path_factory):
    """One uninterrupted single-process evaluation of all three benchmarks into one folder."""
    out = tmp_path_factory.mktemp("eval_full")
    results = {
        name: evaluate_model(model_dir, name, data=data, batch_size=BATCH, out_dir=out, max_new_tokens=NEW_TOKENS,
                             progress=False)
        for name, data in sources.items()
    }
    return out, results


def predictions(out, name="vqa-rad"):
    return read_jsonl(Path(out) / f"{name}-test" / "predictions.jsonl")


# ------------------------------------------------------------------------------------------------------- loaders


def test_loaders_give_one_schema_and_assign_open_closed_as_the_protocol_says(sources):
    vqa_rad = load_benchmark("VQA_RAD", data=sources["vqa-rad"])
    assert vqa_rad.column_names == ["id", "image", "question", "answer", "answer_type"]
    assert vqa_rad["id"] == [str(i) for i in range(len(VQA_RAD_TEST))]
    # yes/no answers (any case, trailing punctuation) are closed, everything else open
    assert vqa_rad["answer_type"] == ["closed" if a.lower().strip(".") in ("yes", "no") else "open"
                                      for _, _, a in VQA_RAD_TEST]
    assert isinstance(vqa_rad[0]["image"], Image.Image) and vqa_rad[1]["image"].size == (40, 36)

    slake = load_benchmark("slake", data=sources["slake"])
    assert slake["id"] == ["11", "12", "13", "15", "16"]  # the Chinese question is left out
    assert slake["answer_type"] == ["closed", "closed", "open", "open", "closed"]  # "Left" is closed in SLAKE
    assert slake[2]["image"].size == (64, 48)

    path_vqa = load_benchmark("pathvqa", data=sources["path-vqa"])
    assert path_vqa["question"] == [q for q, _ in PATH_VQA_TEST]
    assert path_vqa["answer_type"] == ["open", "closed", "open", "closed"]


def test_single_files_and_saved_datasets_load_in_the_same_schemas(vqa_rad_dir, tmp_path):
    reference = load_benchmark("vqa-rad", data=vqa_rad_dir)
    from_parquet = load_benchmark("vqa-rad", data=vqa_rad_dir / "data" / "test-00000-of-00001.parquet")
    assert from_parquet["answer_type"] == reference["answer_type"]

    (tmp_path / "images").mkdir()
    rows = []
    for index, (seed, question, answer) in enumerate(VQA_RAD_TEST[:3]):
        picture(seed).save(tmp_path / "images" / f"{index}.png")
        rows.append({"image": f"images/{index}.png", "question": question, "answer": answer})
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    from_json = load_benchmark("vqa-rad", data=tmp_path / "test.jsonl")  # image paths relative to the file
    assert np.array_equal(np.asarray(from_json[0]["image"]), np.asarray(picture(0)))

    datasets.DatasetDict({"test": reference.select_columns(["image", "question", "answer"])}).save_to_disk(
        tmp_path / "saved"
    )
    assert load_benchmark("vqa-rad", data=tmp_path / "saved")["answer"] == reference["answer"]


def test_split_statistics_count_images_by_content_and_print_beside_table2(sources):
    assert split_statistics(load_benchmark("vqa-rad", data=sources["vqa-rad"])) == {
        "images": 11, "qa": 12, "open": 6, "closed": 6
    }
    statistics = {
        "vqa-rad": benchmark_statistics("vqa-rad", ("train", "test"), sources["vqa-rad"]),
        "slake": benchmark_statistics("slake", ("test",), sources["slake"]),
    }
    assert statistics["slake"]["test"]["ours"] == {"images": 3, "qa": 5, "open": 2, "closed": 3}
    assert statistics["slake"]["test"]["paper"] == {"images": 96, "qa": 1061, "open": 645, "closed": 416}
    table = format_statistics(statistics)
    assert "| VQA-RAD | test | 11 (paper 203) | 12 (paper 451) | 6 (paper 179) | 6 (paper 272) |" in table
    assert "| VQA-RAD | train | 2 (paper 313) | 3 (paper 1,797) |" in table


def test_unknown_benchmarks_and_wrong_schemas_are_refused(tmp_path, slake_dir):
    with pytest.raises(ValueError, match="unknown benchmark 'mimic'; known: vqa-rad, slake, path-vqa"):
        get_benchmark("mimic")
    table = datasets.Dataset.from_dict({"image": [picture(0)], "query": ["Q?"], "answer": ["yes"]})
    table.cast_column("image", datasets.Image()).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['question'\]"):
        load_benchmark("vqa-rad", data=tmp_path / "test.parquet")
    with pytest.raises(FileNotFoundError, match="no validation.json or validate.json or val.json"):
        load_benchmark("slake", split="validation", data=slake_dir)


def test_table3_reference_rows_average_their_six_cells():
    for group, model, cells, average in TABLE3_REFERENCES:
        assert round(sum(cells) / 6, 2) == pytest.approx(average, abs=0.011), (group, model)


# ---------------------------------------------------------------------------------------------------- evaluation


def test_end_to_end_on_each_benchmark_fills_the_table3_layout(full_run, sources):
    out, results = full_run
    for name, data in sources.items():
        records = predictions(out, name)
        expected = load_benchmark(name, data=data)
        assert [r["id"] for r in records] == expected["id"]
        assert all(isinstance(r["prediction"], str) for r in records)
        # the saved metrics are exactly the metric function of the saved predictions
        oracle = vqa_metrics([r["prediction"] for r in records], expected["answer"], expected["answer_type"])
        saved = json.loads((out / f"{name}-test" / "metrics.json").read_text())
        assert saved["metrics"] == pytest.approx(oracle, nan_ok=True)
        assert saved["complete"] and saved["questions"] == len(expected) == results[name]["questions"]

    table = results_table(out)
    values = table["ours"]["values"]
    assert values["slake/open"] == pytest.approx(results["slake"]["metrics"]["open_recall"])
    assert values["path-vqa/closed"] == pytest.approx(results["path-vqa"]["metrics"]["closed_accuracy"])
    assert table["ours"]["average"] == pytest.approx(sum(values.values()) / 6)
    assert table["ours"]["complete"] and table["ours"]["model"] == Path(results["slake"]["model_dir"]).name

    saved = json.loads((out / "results.json").read_text())
    assert saved["ours"]["values"] == pytest.approx(values)
    markdown = (out / "results.md").read_text()
    assert markdown.splitlines()[0] == (
        "| model | VQA-RAD open | VQA-RAD closed | SLAKE open | SLAKE closed | PathVQA open | PathVQA closed | average |"
    )
    assert "| Llama3-Med 8B | 31.20 | 62.87 | 44.34 | 61.06 | 12.88 | 64.97 | 46.22 |" in markdown
    assert f"| {table['ours']['average']:.2f} |" in markdown.splitlines()[2]
    with Image.open(out / "results.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 800


def test_a_partial_table_has_no_average(model_dir, vqa_rad_dir, tmp_path):
    result = evaluate_model(model_dir, "vqa-rad", data=vqa_rad_dir, limit=2, batch_size=BATCH, out_dir=tmp_path,
                            max_new_tokens=NEW_TOKENS, progress=False)
    assert result["questions"] == 2 and not result["complete"]
    assert result["table"]["ours"]["average"] is None and result["table"]["ours"]["values"]["slake/open"] is None
    assert "| **" + model_dir.name + "** (ours) | " in (tmp_path / "results.md").read_text()
    assert "| / | / | / | / | / |" in (tmp_path / "results.md").read_text()


def test_batched_left_padded_answers_equal_one_at_a_time_answers(full_run, model_dir, vqa_rad_dir, tmp_path):
    evaluate_model(model_dir, "vqa-rad", data=vqa_rad_dir, batch_size=1, out_dir=tmp_path,
                   max_new_tokens=NEW_TOKENS, progress=False)
    assert predictions(tmp_path) == predictions(full_run[0])


class Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_results(full_run, model_dir, vqa_rad_dir, tmp_path):
    def stop_after_two_batches(number, records):
        if number == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        evaluate_model(model_dir, "vqa-rad", data=vqa_rad_dir, batch_size=BATCH, out_dir=tmp_path,
                       max_new_tokens=NEW_TOKENS, callback=stop_after_two_batches, progress=False)
    shard = tmp_path / "vqa-rad-test" / "shards" / "rank0.jsonl"
    assert len(read_jsonl(shard)) == 2 * BATCH
    assert not (tmp_path / "vqa-rad-test" / "predictions.jsonl").exists()
    with shard.open("a") as handle:  # a kill in the middle of a write leaves half a record
        handle.write('{"id": "4", "question": "Is the')

    seen = []
    result = evaluate_model(model_dir, "vqa-rad", data=vqa_rad_dir, batch_size=BATCH, out_dir=tmp_path,
                            max_new_tokens=NEW_TOKENS, callback=lambda n, records: seen.extend(records),
                            progress=False)
    assert len(seen) == len(VQA_RAD_TEST) - 2 * BATCH  # only the unfinished questions were generated
    assert [r["id"] for r in read_jsonl(shard)] == [str(i) for i in range(len(VQA_RAD_TEST))]
    assert predictions(tmp_path) == predictions(full_run[0])
    assert result["metrics"] == pytest.approx(full_run[1]["vqa-rad"]["metrics"], nan_ok=True)


def test_a_limited_run_continued_without_limit_gives_the_same_results(full_run, model_dir, vqa_rad_dir, tmp_path):
    first = evaluate_model(model_dir, "vqa-rad", data=vqa_rad_dir, limit=4, batch_size=BATCH, out_dir=tmp_path,
                           max_new_tokens=NEW_TOKENS, progress=False)
    assert first["questions"] == 4 and predictions(tmp_path) == predictions(full_run[0])[:4]
    evaluate_model(model_dir, "vqa-rad", data=vqa_rad_dir, batch_size=BATCH, out_dir=tmp_path,
                   max_new_tokens=NEW_TOKENS, progress=False)
    assert predictions(tmp_path) == predictions(full_run[0])


def test_resuming_with_another_model_or_prompt_is_refused(model_dir, vqa_rad_dir, tmp_path):
    evaluate_model(model_dir, "vqa-rad", data=vqa_rad_dir, limit=1, batch_size=1, out_dir=tmp_path,
                   max_new_tokens=NEW_TOKENS, progress=False)
    expected = "other settings.*prompt: '{question}' before, 'Answer briefly: {question}' now"
    with pytest.raises(ValueError, match=expected):
        evaluate_model(model_dir, "vqa-rad", data=vqa_rad_dir, batch_size=1, out_dir=tmp_path,
                       max_new_tokens=NEW_TOKENS, prompt="Answer briefly: {question}", progress=False)


def eval_command(model_dir, data, out, *extra):
    return ["eval", "--model", str(model_dir), "--dataset", "vqa-rad", "--data", str(data), "--out", str(out),
            "--batch-size", str(BATCH), "--max-new-tokens", str(NEW_TOKENS), "--no-progress", *extra]


def test_a_killed_command_line_run_resumes_to_the_same_results(full_run, model_dir, vqa_rad_dir, tmp_path):
    command = [sys.executable, "-m", "hf_medvlm.evaluation", *eval_command(model_dir, vqa_rad_dir, tmp_path)]
    shard = tmp_path / "vqa-rad-test" / "shards" / "rank0.jsonl"
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (shard.exists() and shard.read_bytes().count(b"\n") >= BATCH):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no batch written in 120 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert len(read_jsonl(shard)) < len(VQA_RAD_TEST)  # killed with work left

    assert main(eval_command(model_dir, vqa_rad_dir, tmp_path)) == 0
    assert predictions(tmp_path) == predictions(full_run[0])


def test_two_processes_give_the_same_results_as_one(full_run, model_dir, vqa_rad_dir, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "hf_medvlm.evaluation", *eval_command(model_dir, vqa_rad_dir, tmp_path),
    ]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    shards = tmp_path / "vqa-rad-test" / "shards"
    per_process = [[r["id"] for r in read_jsonl(shards / f"rank{rank}.jsonl")] for rank in (0, 1)]
    assert per_process == [[str(i) for i in range(6)], [str(i) for i in range(6, 12)]]  # each wrote its own half
    assert predictions(tmp_path) == predictions(full_run[0])
    merged = json.loads((tmp_path / "vqa-rad-test" / "metrics.json").read_text())["metrics"]
    assert merged == pytest.approx(full_run[1]["vqa-rad"]["metrics"], nan_ok=True)


# ------------------------------------------------------------------------------------------------- command line


def test_commands_plug_into_an_argparse_parser_and_print_statistics(sources, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="hf-medvlm")
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", "--model", "m", "--dataset", "slake", "--limit", "5"])
    assert (args.split, args.limit, args.batch_size, args.out) == ("test", 5, 8, "outputs/eval")
    assert parser.parse_args(["eval-reports", "--model", "m", "--data", "d"]).report_column == "findings"

    assert main(["eval-stats", "--dataset", "path-vqa", "--data", str(sources["path-vqa"])]) == 0
    assert "| PathVQA | test | 4 (paper 858) | 4 (paper 6,761) | 2 (paper 3,370) | 2 (paper 3,391) |" in (
        capsys.readouterr().out
    )
    assert main(["eval", "--model", "m", "--dataset", "mimic"]) == 2
    assert "unknown benchmark 'mimic'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------- judge

PARSED_REPLIES = [
    ('{"significant_errors": 2, "insignificant_errors": 1}', (2, 1)),
    ('Here is my assessment.\n```json\n{"significant_errors": 0, "insignificant_errors": 3}\n```\nDone.', (0, 3)),
    ('{"errors": {"clinically_significant": 1, "clinically_insignificant": 0}}', (1, 0)),
    ('{"significant_errors": ["missed effusion", "wrong side"], "insignificant_errors": []}', (2, 0)),
    ('{"significant_errors": "1", "insignificant_errors": 2.0}', (1, 2)),
    ("Clinically significant errors: 2\nClinically insignificant errors: 1", (2, 1)),
    ("**Significant errors**: 1\n**Insignificant errors:** 0\nThe candidate misses the effusion.", (1, 0)),
    ("insignificant: 4, significant: 0", (0, 4)),
    ("significant: none\ninsignificant: 1", (0, 1)),
    ("<think>significant: 9? let me recount</think>\nsignificant = 1\ninsignificant = 1", (1, 1)),
    ('{"significant_errors": 1}\nInsignificant errors: 2', (1, 2)),
    ("The candidate has 1 clinically significant error and 2 insignificant errors.", (1, 2)),
    ("There are no significant errors and 1 clinically insignificant error (wording).", (0, 1)),
    ("significant errors: 2 insignificant errors: 1", (2, 1)),
]
UNPARSEABLE_REPLIES = [
    ("", "empty_reply"),
    ("The candidate report is mostly accurate.", "no_counts"),
    ('{"significant_errors": <number>, "insignificant_errors": <number>}', "no_counts"),
    ("Insignificant errors: 2", "missing_significant"),
    ("Significant errors: 1", "missing_insignificant"),
    ('{"significant_errors": 1}', "missing_insignificant"),
    ("significant: 1\ninsignificant: 0\nOn reflection, significant: 2", "conflicting"),
    ('{"significant_errors": 1, "insignificant_errors": 0} or {"significant_errors": 2, "insignificant_errors": 0}',
     "conflicting"),
    ('{"significant_errors": -1, "insignificant_errors": 0}', "bad_value"),
    ('{"significant_errors": "a few", "insignificant_errors": 0}', "bad_value"),
    ("Of 3 significant findings the candidate misses 2; insignificant: 0", "missing_significant"),
    ("2 significant errors. On second thought, significant: 1; insignificant: 0", "conflicting"),
    # SmolLM2 through transformers serve: the "1." opening a list is no count
    ("The candidate report contains 3 significant errors:\n\n1. A finding of the", "missing_insignificant"),
]


@pytest.mark.parametrize("reply, counts", PARSED_REPLIES)
def test_judge_replies_with_both_counts_are_parsed(reply, counts):
    judgement = parse_judgement(reply)
    assert judgement["status"] == "parsed", judgement
    assert (judgement["significant"], judgement["insignificant"]) == counts


@pytest.mark.parametrize("reply, reason", UNPARSEABLE_REPLIES)
def test_judge_replies_without_clear_counts_are_unparseable_not_guessed(reply, reason):
    judgement = parse_judgement(reply)
    assert judgement["status"] == "unparseable" and judgement["reason"] == reason, judgement
    assert judgement["significant"] is None and judgement["insignificant"] is None


def test_summary_counts_every_judgement_once():
    judgements = [parse_judgement(reply) for reply, _ in PARSED_REPLIES + UNPARSEABLE_REPLIES]
    summary = summarize_judgements(judgements)
    assert summary["reports"] == len(judgements)
    assert (summary["parsed"], summary["unparseable"]) == (len(PARSED_REPLIES), len(UNPARSEABLE_REPLIES))
    assert sum(summary["unparseable_reasons"].values()) == len(UNPARSEABLE_REPLIES)
    assert summary["significant_errors"] == sum(counts[0] for _, counts in PARSED_REPLIES)
    assert summary["insignificant_errors"] == sum(counts[1] for _, counts in PARSED_REPLIES)
    assert summary["reports_without_significant_errors"] == sum(1 for _, c in PARSED_REPLIES if c[0] == 0)
    assert summarize_judgements([])["mean_significant_errors"] is None


def test_an_unreachable_judge_is_an_error_and_writes_no_judgement(tmp_path):
    from hf_medvlm.data.synthesis import ChatEndpoint, SynthesisError

    client = ChatEndpoint(f"http://127.0.0.1:{free_port()}/v1", "judge", max_retries=0, timeout=5)
    with pytest.raises(SynthesisError, match="failed after 1 attempts"):
        judge_reports([{"id": "a", "reference": "Normal.", "prediction": "Normal."}], client, tmp_path / "j.jsonl",
                      progress=False)
    assert read_jsonl(tmp_path / "j.jsonl") == []


@pytest.fixture(scope="module")
def reports_file(tmp_path_factory):
    """Image-report pairs as one parquet file; the row without findings is dropped by the loader."""
    folder = tmp_path_factory.mktemp("reports")
    table = datasets.Dataset.from_dict(
        {
            "image": [picture(60), picture(61, 40, 64), picture(62)],
            "findings": ["No focal consolidation. No pleural effusion.", "",
                         "Small left pleural effusion. Heart size is normal."],
            "study_id": ["s1", "s2", "s3"],
        }
    ).cast_column("image", datasets.Image())
    table.to_parquet(folder / "test.parquet")
    return folder / "test.parquet"


def test_report_generation_and_judge_end_to_end_against_transformers_serve(
    served_smollm2, model_dir, reports_file, tmp_path
):
    from hf_medvlm.data.synthesis import ChatEndpoint

    endpoint, served_model = served_smollm2
    judge = ChatEndpoint(endpoint, served_model, max_tokens=16, temperature=0.0)
    scores = generate_reports(model_dir, reports_file, id_column="study_id", batch_size=2, out_dir=tmp_path,
                              max_new_tokens=NEW_TOKENS, judge=judge, progress=False)
    run = tmp_path / "reports-test"
    records = read_jsonl(run / "predictions.jsonl")
    assert [r["id"] for r in records] == ["s1", "s3"]
    assert scores["lexical"] == pytest.approx(
        report_metrics([r["prediction"] for r in records], [r["reference"] for r in records])
    )

    judgements = read_jsonl(run / "judgements.jsonl")
    assert sorted(j["id"] for j in judgements) == ["s1", "s3"]
    for judgement in judgements:  # every reply is recorded and its judgement is the parser's verdict on it
        assert isinstance(judgement["reply"], str)
        assert {k: judgement[k] for k in ("status", "significant", "insignificant", "reason")} == {
            k: parse_judgement(judgement["reply"])[k] for k in ("status", "significant", "insignificant", "reason")
        }
    summary = scores["judge"]
    assert summary["parsed"] + summary["unparseable"] == summary["reports"] == 2
    assert sum(summary["unparseable_reasons"].values()) == summary["unparseable"]
    assert json.loads((run / "scores.json").read_text())["judge"]["reports"] == 2

    # a rerun finds every report judged: the endpoint, now pointing nowhere, is never called
    dead = ChatEndpoint(f"http://127.0.0.1:{free_port()}/v1", served_model, max_retries=0)
    again = judge_reports(records, dead, run / "judgements.jsonl", progress=False)
    assert again["judgements"] == judgements
