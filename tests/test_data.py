"""Instruction data: LLaVA-Med ingestion, alignment pairs, cards, and synthesis against stub and real endpoints."""

import argparse
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from huggingface_hub import DatasetCard
from PIL import Image
from transformers import AutoTokenizer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from hf_medvlm import LlavaMedHiResImageProcessor, LlavaMedHiResProcessor
from hf_medvlm.data import (
    FEW_SHOT_EXAMPLES,
    ChatEndpoint,
    DataValidationError,
    SynthesisError,
    add_data_commands,
    alignment_pairs,
    assign_generator,
    dataset_card,
    from_llava_med,
    load_dataset_dir,
    parse_conversation,
    save_dataset,
    synthesis_messages,
    synthesize,
)
from hf_medvlm.data.alignment import BRIEF_DESCRIPTION_INSTRUCTIONS
from hf_medvlm.data.cli import main as data_main
from hf_medvlm.data.prompts import conversation_text

from conftest import TILE

REJECTION_REASONS = {
    "no_turns", "non_alternating_turns", "empty_question", "empty_answer", "too_few_turns", "mentions_source",
    "refers_to_missing_image", "repeated_question",
}
VALID_REPLY = (
    "User: What kind of image is this?\nAssistant: A frontal chest radiograph.\n"
    "User: Does one side look different?\nAssistant: The lower right lung field is whiter; a doctor should review it."
)


def write_image(path: Path, width=40, height=30, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def turn(source, value):
    return {"from": source, "value": value}


@pytest.fixture()
def image_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for index, name in enumerate(["PMC1_F1.jpg", "PMC2_F2.jpg", "PMC3_F1.jpg", "PMC4_F3.jpg"]):
        write_image(root / name, 40 + 10 * index, 30, seed=index)
    return root


# LLaVA-Med instruct 10k/60k layout (BRIEF §4), with the released `conversatons` spelling and broken records
INSTRUCT_RECORDS = [
    {"id": "PMC1_F1", "image": "PMC1_F1.jpg", "domain": {"ct_scan": True},
     "conversations": [turn("human", "<image>\nWhat modality is this?"), turn("gpt", "An axial CT of the chest.")]},
    {"id": "PMC2_F2", "image": "PMC2_F2.jpg",
     "conversatons": [turn("human", "Which stain was used?\n<image>"), turn("gpt", "Hematoxylin and eosin."),
                      turn("human", "Is the architecture preserved?"), turn("gpt", "No, it is effaced.")]},
    {"id": "mismatch", "image": "PMC1_F1.jpg",
     "conversations": [turn("human", "<image>\nCompare with <image>"), turn("gpt", "They differ.")]},
    {"id": "no_placeholder", "image": "PMC1_F1.jpg",
     "conversations": [turn("human", "What is shown?"), turn("gpt", "A CT.")]},
    {"id": "missing_file", "image": "PMC9_F9.jpg",
     "conversations": [turn("human", "<image>\nWhat is shown?"), turn("gpt", "A CT.")]},
    {"id": "empty_turn", "image": "PMC3_F1.jpg",
     "conversations": [turn("human", "<image>\nWhat is shown?"), turn("gpt", "   ")]},
    {"id": "unknown_role", "image": "PMC3_F1.jpg",
     "conversations": [turn("human", "<image>\nWhat is shown?"), turn("doctor", "An MRI.")]},
    {"id": "non_alternating", "image": "PMC3_F1.jpg",
     "conversations": [turn("human", "<image>\nWhat is shown?"), turn("human", "Any lesion?"), turn("gpt", "No.")]},
    {"id": "PMC1_F1", "image": "PMC1_F1.jpg",
     "conversations": [turn("human", "<image>\nAgain?"), turn("gpt", "Yes.")]},
]
EXPECTED_REJECTIONS = {
    "mismatch": "image_placeholder_mismatch",
    "no_placeholder": "image_placeholder_mismatch",
    "missing_file": "missing_image",
    "empty_turn": "empty_turn",
    "unknown_role": "unknown_role",
    "non_alternating": "non_alternating_turns",
    "PMC1_F1": "duplicate_id",
}

# qa50 eval file layout (one JSON per line): question, GPT-4's text-only answer, caption and in-text mentions
QA50_RECORDS = [
    {"question_id": 0, "image": "PMC3_F1.jpg", "pair_id": "PMC3_F1", "text": "What is the organ in the image?\n<image>",
     "gpt4_answer": "The conjunctiva.", "fig_caption": "Conjunctival cyst (H&E).", "type": "conversation",
     "in_text_mention": [{"tokens": "No inflammatory cells ( Fig. 3 ) .", "entities": []}], "fig_label": "Fig. 3",
     "domain": {"histology": True}},
    {"question_id": 1, "image": "PMC3_F1.jpg", "pair_id": "PMC3_F1", "text": "Describe the lining.\n<image>",
     "gpt4_answer": "A single layer of low cuboidal epithelium.", "fig_caption": "Conjunctival cyst (H&E).",
     "type": "detailed_description", "in_text_mention": [], "fig_label": "Fig. 3", "domain": {"histology": True}},
]

# 60k inline-mention layout: instruct records whose answers were written with the article's in-text mentions
INLINE_MENTION_RECORDS = [
    {"id": "PMC4_F3", "image": "PMC4_F3.jpg", "domain": {"mri": True, "ct_scan": False},
     "conversations": [turn("human", "<image>\nWhat sequence is shown?"), turn("gpt", "A T2-weighted MRI."),
                       turn("human", "Where is the bright area?"), turn("gpt", "In the left temporal lobe.")]},
]

# alignment 500k layout: one "describe" turn and the caption
ALIGNMENT_RECORDS = [
    {"id": "PMC1_F1", "image": "PMC1_F1.jpg",
     "conversations": [turn("human", "<image>\nDescribe the image concisely."), turn("gpt", "Chest CT, axial.")]},
    {"id": "PMC2_F2", "image": "PMC2_F2.jpg",
     "conversations": [turn("human", "Give a short description.\n<image>"), turn("gpt", "Lymph node, H&E.")]},
    {"id": "two_turns", "image": "PMC3_F1.jpg",
     "conversations": [turn("human", "<image>\nDescribe."), turn("gpt", "A cyst."), turn("human", "More?"),
                       turn("gpt", "No.")]},
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return LlavaMedHiResProcessor(
        image_processor=LlavaMedHiResImageProcessor(scales=[TILE, 2 * TILE]), tokenizer=tokenizer, image_seq_length=16
    )


# ---------------------------------------------------------------- ingestion


def test_instruct_file_counts_report_and_saved_dataset(tmp_path, image_root):
    source = tmp_path / "llava_med_instruct_60k.json"
    source.write_text(json.dumps(INSTRUCT_RECORDS))
    dataset, report = from_llava_med(source, image_root, out=tmp_path / "out")

    assert (report.total, report.kept, len(report.rejected)) == (9, 2, 7)
    assert {item["id"]: item["reason"] for item in report.rejected} == EXPECTED_REJECTIONS
    assert all(item["detail"] for item in report.rejected)
    assert dataset["id"] == ["PMC1_F1", "PMC2_F2"]
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["rejected_count"] == 7 and written["kept"] == 2 and written["total"] == 9
    assert written["rejected_by_reason"] == {
        "duplicate_id": 1, "empty_turn": 1, "image_placeholder_mismatch": 2, "missing_image": 1,
        "non_alternating_turns": 1, "unknown_role": 1,
    }
    assert "kept 2 of 9 records, rejected 7" in report.summary()

    # the image files are embedded in the saved dataset: it loads after the originals are gone
    for path in image_root.iterdir():
        path.unlink()
    reloaded = load_dataset_dir(tmp_path / "out")
    assert reloaded["messages"] == dataset["messages"]
    assert [image.size for image in reloaded[1]["images"]] == [(50, 30)]
    assert DatasetCard.load(tmp_path / "out" / "README.md").data.license == "cc-by-nc-4.0"


def test_misspelt_conversatons_and_trailing_placeholder_become_typed_content(tmp_path, image_root):
    source = tmp_path / "instruct.jsonl"
    source.write_text("\n".join(json.dumps(record) for record in INSTRUCT_RECORDS[:2]) + "\n")
    dataset, report = from_llava_med(source, image_root)
    assert report.kept == 2 and not report.rejected
    assert dataset[1]["messages"] == [
        {"role": "user",
         "content": [{"type": "image", "text": None}, {"type": "text", "text": "Which stain was used?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hematoxylin and eosin."}]},
        {"role": "user", "content": [{"type": "text", "text": "Is the architecture preserved?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "No, it is effaced."}]},
    ]
    assert dataset.features["images"].feature.__class__.__name__ == "Image"


def test_converted_messages_render_through_the_chat_template_and_trl_collator(
    tmp_path, image_root, processor, tokenizer
):
    source = tmp_path / "llava_med_instruct_60k_inline_mention.json"
    source.write_text(json.dumps(INLINE_MENTION_RECORDS + INSTRUCT_RECORDS[:1]))
    dataset, report = from_llava_med(source, image_root)
    assert report.kept == 2
    assert processor.apply_chat_template(dataset[0]["messages"]) == (
        "<|im_start|>user\n<image>\nWhat sequence is shown?<|im_end|>\n"
        "<|im_start|>assistant\nA T2-weighted MRI.<|im_end|>\n"
        "<|im_start|>user\nWhere is the bright area?<|im_end|>\n"
        "<|im_start|>assistant\nIn the left temporal lobe.<|im_end|>\n"
    )
    collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    batch = collator([dict(row) for row in dataset])
    assert batch["pixel_values"].shape[:2] == (2, 5)
    assert int((batch["input_ids"][0] == processor.image_token_id).sum()) == processor.image_seq_length
    trained = [tokenizer.decode(ids[labels != -100]) for ids, labels in zip(batch["input_ids"], batch["labels"])]
    assert trained == [
        "A T2-weighted MRI.<|im_end|>In the left temporal lobe.<|im_end|>", "An axial CT of the chest.<|im_end|>"
    ]


def test_qa50_eval_records(tmp_path, image_root, processor):
    source = tmp_path / "llava_med_eval_qa50_qa.jsonl"
    source.write_text("\n".join(json.dumps(record) for record in QA50_RECORDS) + "\n")
    dataset, report = from_llava_med(source, image_root)
    assert dataset["id"] == ["0", "1"] and report.summary().endswith("kept 2 of 2 records, rejected 0")
    assert processor.apply_chat_template(dataset[0]["messages"]) == (
        "<|im_start|>user\n<image>\nWhat is the organ in the image?<|im_end|>\n"
        "<|im_start|>assistant\nThe conjunctiva.<|im_end|>\n"
    )


def test_alignment_500k_in_prompt_completion_form(tmp_path, image_root, processor, tokenizer):
    source = tmp_path / "llava_med_alignment_500k.json"
    source.write_text(json.dumps(ALIGNMENT_RECORDS))
    dataset, report = from_llava_med(source, image_root, form="prompt-completion")
    assert dataset["id"] == ["PMC1_F1", "PMC2_F2"]
    assert [(item["id"], item["reason"]) for item in report.rejected] == [("two_turns", "not_single_turn")]
    assert dataset[1]["prompt"] == [
        {"role": "user",
         "content": [{"type": "image", "text": None}, {"type": "text", "text": "Give a short description."}]}
    ]
    answer = [{"role": "assistant", "content": [{"type": "text", "text": "Lymph node, H&E."}]}]
    assert dataset[1]["completion"] == answer
    batch = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)([dict(row) for row in dataset])
    trained = [tokenizer.decode(ids[labels != -100]) for ids, labels in zip(batch["input_ids"], batch["labels"])]
    assert [text.strip() for text in trained] == ["Chest CT, axial.<|im_end|>", "Lymph node, H&E.<|im_end|>"]


def test_strict_fails_after_writing_the_report(tmp_path, image_root):
    source = tmp_path / "instruct.json"
    source.write_text(json.dumps(INSTRUCT_RECORDS))
    with pytest.raises(DataValidationError, match="strict mode allows no rejection.*mismatch: image_placeholder"):
        from_llava_med(source, image_root, strict=True, out=tmp_path / "out")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rejected_count"] == 7
    assert not (tmp_path / "out" / "dataset_info.json").exists()


def test_cli_commands(tmp_path, image_root, capsys):
    source = tmp_path / "instruct.json"
    source.write_text(json.dumps(INSTRUCT_RECORDS))
    out = tmp_path / "out"
    assert data_main(["from-llava-med", str(source), "--image-root", str(image_root), "--out", str(out)]) == 0
    assert "kept 2 of 9 records, rejected 7" in capsys.readouterr().out
    assert load_dataset_dir(out).num_rows == 2
    args = ["from-llava-med", str(source), "--image-root", str(image_root), "--out", str(tmp_path / "o2"), "--strict"]
    assert data_main(args) == 2
    assert "strict mode allows no rejection" in capsys.readouterr().err

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "a", "image": "PMC1_F1.jpg", "caption": "Axial CT."}) + "\n")
    assert data_main(["alignment", str(pairs), "--image-root", str(image_root), "--out", str(tmp_path / "o3")]) == 0
    assert load_dataset_dir(tmp_path / "o3")[0]["completion"][0]["content"][0]["text"] == "Axial CT."

    # the commands plug into any argparse CLI as `data ...`
    parser = argparse.ArgumentParser(prog="hf-medvlm")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["data", "synthesize", "--captions", "c.json", "--out", "o", "--local", "m", "--limit", "3"]
    )
    assert (args.command, args.data_command, args.limit, args.local) == ("data", "synthesize", 3, "m")


# ---------------------------------------------------------------- alignment pairs


def test_alignment_pairs_from_jsonl_csv_and_a_dataset(tmp_path, image_root):
    rows = [{"id": f"fig{i}", "image": "PMC1_F1.jpg", "caption": f"Caption number {i}."} for i in range(12)]
    rows += [
        {"id": "blank", "image": "PMC1_F1.jpg", "caption": "  "}, {"id": "lost", "image": "nope.png", "caption": "x"}
    ]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    table = tmp_path / "pairs.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    from_jsonl, report = alignment_pairs(jsonl, image_root)
    from_csv, _ = alignment_pairs(table, image_root)
    from_rows, _ = alignment_pairs(Dataset.from_list(list(reversed(rows))), image_root)

    reasons = {(item["id"], item["reason"]) for item in report.rejected}
    assert reasons == {("blank", "empty_caption"), ("lost", "missing_image")}
    assert report.kept == 12
    assert from_jsonl["prompt"] == from_csv["prompt"] == list(reversed(from_rows["prompt"]))
    instructions = [row[0]["content"][1]["text"] for row in from_jsonl["prompt"]]
    assert set(instructions) <= set(BRIEF_DESCRIPTION_INSTRUCTIONS) and len(set(instructions)) >= 4
    captions = [row[0]["content"][0]["text"] for row in from_jsonl["completion"]]
    assert captions == [f"Caption number {i}." for i in range(12)]
    messages, _ = alignment_pairs(jsonl, image_root, form="messages")
    assert messages[0]["messages"] == from_jsonl[0]["prompt"] + from_jsonl[0]["completion"]


def test_dataset_card_renders_and_saves_with_the_dataset(tmp_path, image_root):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"id": "a", "image": "PMC1_F1.jpg", "caption": "CT."}) + "\n"
        + json.dumps({"id": "b", "image": "missing.png", "caption": "MR."}) + "\n"
    )
    dataset, report = alignment_pairs(pairs, image_root)
    card = dataset_card(dataset, report=report, form="prompt-completion", kind="alignment", pretty_name="PMC pairs")
    assert card.data.pretty_name == "PMC pairs" and card.data.size_categories == ["n<1K"]
    assert "medical" in card.data.tags and "image-text-to-text" in card.data.task_categories
    assert "kept 1 of 2 records, rejected 1" in card.text and "| missing_image | 1 |" in card.text
    save_dataset(dataset, tmp_path / "saved", card)
    assert DatasetCard.load(tmp_path / "saved" / "README.md").data.to_dict() == card.data.to_dict()
    assert load_dataset_dir(tmp_path / "saved")["completion"] == dataset["completion"]


# ---------------------------------------------------------------- prompt and reply rules


def test_prompt_has_rules_then_few_shot_examples_then_the_figure():
    messages = synthesis_messages("Axial CT showing a mass.", ["The mass grew (Fig. 1)."], "Fig. 1")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(FEW_SHOT_EXAMPLES) + ["user"]
    for word in ('"caption"', '"context"', '"mentioned"', "medical advice", "healthcare professional", "numbers"):
        assert word in messages[0]["content"]
    assert "Fig. 1: Axial CT showing a mass." in messages[-1]["content"] and "The mass grew" in messages[-1]["content"]
    without = synthesis_messages("Axial CT showing a mass.", ["The mass grew (Fig. 1)."], "Fig. 1", use_mentions=False)
    assert not any("refer to the figure" in message["content"] for message in without)


def test_few_shot_examples_follow_the_rules_they_teach():
    for example in FEW_SHOT_EXAMPLES:
        exchanges, problem = parse_conversation(conversation_text(example["conversation"]))
        assert problem is None and exchanges == [tuple(pair) for pair in example["conversation"]]


@pytest.mark.parametrize(
    "reply, truncated, reason",
    [
        (VALID_REPLY, False, None),
        ("Here you go:\n**User:** What is it?\n**Assistant:** A CT.\n**User:** Where?\n**Assistant:** The chest.",
         False, None),
        ("The image shows a CT of the chest.", False, "no_turns"),
        ("User: What is it?\nAssistant: A CT.", False, "too_few_turns"),
        (VALID_REPLY + "\nUser: And the heart?\nAssistant: It looks norm", True, None),
        ("User: What is it?\nAssistant: A CT.\nUser: Where?\nAssistant: The ch", True, "too_few_turns"),
        ("User: What is it?\nAssistant:\nUser: Where?\nAssistant: The chest.", False, "empty_answer"),
        (VALID_REPLY + "\nUser: And the heart?", False, "empty_answer"),
        ("User: What is it?\nUser: Where?\nAssistant: The chest.\nAssistant: Yes.", False, "non_alternating_turns"),
        (VALID_REPLY.replace("A frontal", "As the caption says, a frontal"), False, "mentions_source"),
        (VALID_REPLY.replace("Does one side", "Given the context, does one side"), False, "mentions_source"),
        (VALID_REPLY.replace("whiter;", "whiter, as mentioned;"), False, "mentions_source"),
        (VALID_REPLY.replace("A frontal", "I cannot see the image, but a frontal"), False, "refers_to_missing_image"),
        ("User: What is it?\nAssistant: A CT.\nUser: What is  it?\nAssistant: A CT scan.", False, "repeated_question"),
    ],
)
def test_reply_rules(reply, truncated, reason):
    exchanges, problem = parse_conversation(reply, truncated=truncated)
    if reason is None:
        assert problem is None and len(exchanges) >= 2 and all(q and a for q, a in exchanges)
    else:
        assert exchanges is None and problem[0] == reason and problem[1]


def test_generators_share_records_by_weight_and_keep_their_share_on_reruns():
    small, large = ChatEndpoint("http://x/v1", "a", weight=0.25), ChatEndpoint("http://y/v1", "b", weight=0.75)
    ids = [f"PMC{i}_F1" for i in range(4000)]
    picks = [assign_generator(i, [small, large]).name for i in ids]
    assert abs(picks.count("a") / len(ids) - 0.25) < 0.03
    assert picks == [assign_generator(i, [small, large]).name for i in ids]  # stable: a resumed run keeps the mix
    assert picks != [assign_generator(i, [small, large], seed=1).name for i in ids]


# ---------------------------------------------------------------- synthesis against stub endpoints


@contextlib.contextmanager
def stub_endpoint(respond):
    """A loopback OpenAI-style server: `respond(request_number, body, headers) -> (status, reply_text)`."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"body": body, "headers": {k.lower(): v for k, v in self.headers.items()}, "path": self.path})
            status, text = respond(len(seen), body, self.headers)
            payload = (
                {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
                if status == 200 else {"error": text}
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def caption_file(tmp_path, count, name="captions.json"):
    # LLaVA-Med's fig_captions layout: records grouped by domain
    records = [
        {"pair_id": f"PMC{i}_F1", "fig_label": "Figure 1", "fig_caption": f"Axial CT of case {i} showing a mass.",
         "in_text_mention": [{"tokens": f"The mass in case {i} was resected ( Figure 1 ) ."}]}
        for i in range(count)
    ]
    path = tmp_path / name
    path.write_text(json.dumps({"ct_scan": records[::2], "mri": records[1::2]}))
    return path, sorted(record["pair_id"] for record in records)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


def finished_ids(out):
    return [r["id"] for name in ("conversations.jsonl", "rejected.jsonl") for r in read_jsonl(out / name)]


def test_failing_endpoint_stops_after_bounded_retries_and_keeps_what_finished(tmp_path):
    captions, ids = caption_file(tmp_path, 3)
    out = tmp_path / "out"
    with stub_endpoint(lambda n, body, headers: (200, VALID_REPLY) if n == 1 else (503, "overloaded")) as (url, seen):
        generator = ChatEndpoint(url, "stub", max_retries=2, backoff=0.01)
        with pytest.raises(SynthesisError, match=r"failed after 3 attempts; last error: HTTP 503.*1 finished records"):
            synthesize(captions, out, generator, concurrency=1, progress=False)
        assert len(seen) == 1 + 3  # one success, then one record tried 3 times, then the run stopped
    assert len(read_jsonl(out / "conversations.jsonl")) == 1

    with stub_endpoint(lambda *_: (200, VALID_REPLY)) as (url, seen):
        result = synthesize(captions, out, ChatEndpoint(url, "stub"), concurrency=2, progress=False)
    assert (result.skipped, result.kept, len(seen)) == (1, 2, 2)
    assert sorted(finished_ids(out)) == ids


def test_unreachable_endpoint_gives_a_clear_error_and_keeps_finished_records(tmp_path, capsys):
    captions, _ = caption_file(tmp_path, 3)
    out = tmp_path / "out"
    with stub_endpoint(lambda *_: (200, VALID_REPLY)) as (url, _seen):
        synthesize(captions, out, ChatEndpoint(url, "stub"), limit=1, progress=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    start = time.monotonic()
    expected = r"/v1/chat/completions failed after 3 attempts; last error: APIConnectionError.*Connect"
    with pytest.raises(SynthesisError, match=expected):
        synthesize(captions, out, ChatEndpoint(closed, "stub", max_retries=2, backoff=0.05), progress=False)
    assert time.monotonic() - start < 10
    assert len(read_jsonl(out / "conversations.jsonl")) == 1

    command = ["synthesize", "--captions", str(captions), "--out", str(out), "--endpoint", closed, "--model", "stub",
               "--max-retries", "1", "--backoff", "0.01", "--no-progress"]
    with pytest.raises(SystemExit) as stopped:
        data_main(command)
    assert stopped.value.code == 1
    assert "failed after 2 attempts" in capsys.readouterr().err
    assert len(read_jsonl(out / "conversations.jsonl")) == 1


def test_client_errors_are_not_retried_and_the_key_stays_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    captions, _ = caption_file(tmp_path, 1)
    with stub_endpoint(lambda *_: (404, "model 'nope' not found")) as (url, seen):
        generator = ChatEndpoint(url, "nope", max_retries=3, backoff=0.01)
        with pytest.raises(SynthesisError, match="answered HTTP 404") as error:
            synthesize(captions, tmp_path / "out", generator, progress=False)
    assert len(seen) == 1 and seen[0]["headers"]["authorization"] == "Bearer sk-test-not-a-real-key"
    assert "sk-test" not in str(error.value) and "sk-test" not in repr(generator)


def test_two_generators_mix_rejections_are_reported_and_torn_lines_repaired(tmp_path, image_root):
    captions, ids = caption_file(tmp_path, 8)
    out = tmp_path / "out"
    out.mkdir()
    # a run killed while writing leaves half a line behind
    (out / "conversations.jsonl").write_text('{"id": "PMC0_F1", "image": "PMC0_F1.jpg", "conver')

    def claude_like(n, body, headers):
        return 200, VALID_REPLY

    def llama_like(n, body, headers):  # breaks a rule for every other record
        query = body["messages"][-1]["content"]
        if "case 1 " in query or "case 5 " in query:
            return 200, VALID_REPLY
        return 200, VALID_REPLY.replace("A frontal", "The caption: a")

    with stub_endpoint(claude_like) as (url_a, seen_a), stub_endpoint(llama_like) as (url_b, seen_b):
        generators = [ChatEndpoint(url_a, "claude", weight=0.25), ChatEndpoint(url_b, "llama", weight=0.75)]
        result = synthesize(captions, out, generators, concurrency=3, progress=False, image_root=image_root)
    kept, rejected = read_jsonl(out / "conversations.jsonl"), read_jsonl(out / "rejected.jsonl")
    assert sorted(r["id"] for r in kept + rejected) == ids  # the torn line is gone, nothing twice
    assert all(r["generator"] == assign_generator(r["id"], generators).name for r in kept + rejected)
    assert result.by_generator == {"claude": len(seen_a), "llama": len(seen_b)} and len(seen_a) + len(seen_b) == 8
    assert all(r["reason"] == "mentions_source" and r["generator"] == "llama" and r["reply"] for r in rejected)
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] + report["rejected_count"] == report["total"] == 8 == result.kept + result.rejected
    assert kept[0]["conversations"][0]["value"].startswith("<image>\n")
    assert json.loads((out / "conversations.json").read_text()) == kept
    # the datasets form is built only from kept records whose image exists; the others are in its report
    dataset = load_dataset_dir(out / "dataset")
    assert set(dataset["id"]) == {r["id"] for r in kept} & {p.stem for p in image_root.iterdir()}
    # a finished run sends nothing more; strict turns the rejections into a failure, after the report
    with pytest.raises(DataValidationError, match="strict mode allows no rejection"):
        synthesize(captions, out, generators, strict=True, progress=False)
    assert sorted(finished_ids(out)) == ids


# ---------------------------------------------------------------- synthesis against a real `transformers serve`


def check_synthesis_output(out, ids, processor):
    """Every caption once: kept and valid under the rules, or rejected with a reason; the counts add up."""
    kept, rejected = read_jsonl(out / "conversations.jsonl"), read_jsonl(out / "rejected.jsonl")
    assert sorted(r["id"] for r in kept + rejected) == ids
    for record in kept:  # valid: parsed into >= 2 turns that pass the rules
        turns = record["conversations"]
        pairs = [(q["value"].replace("<image>\n", ""), a["value"]) for q, a in zip(turns[::2], turns[1::2])]
        assert parse_conversation(conversation_text(pairs))[1] is None and len(pairs) >= 2
    for record in rejected:  # or rejected with a reason and the reply that broke the rule
        assert record["reason"] in REJECTION_REASONS and record["detail"] and record["reply"] is not None
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] + report["rejected_count"] == report["total"] == len(ids)
    assert report["kept"] == len(kept)
    if kept:  # only PMC1_F1 has an image: the datasets form reports the others as missing, nothing silently lost
        conversion = json.loads((out / "dataset" / "report.json").read_text())
        assert conversion["kept"] + conversion["rejected_count"] == len(kept)
        for row in load_dataset_dir(out / "dataset"):
            assert processor.apply_chat_template(row["messages"]).startswith("<|im_start|>user\n<image>\n")


# one request (~760 prompt tokens, <= 48 new) takes ~5 s on an idle 2-core CPU, a minute when the machine is shared
def test_synthesis_against_transformers_serve_stopped_and_resumed(served_smollm2, tmp_path, image_root, processor):
    url, model = served_smollm2
    captions, ids = caption_file(tmp_path, 2)
    out = tmp_path / "out"
    generator = ChatEndpoint(url, model, max_tokens=48, temperature=0, max_retries=1, backoff=0.5)
    first = synthesize(captions, out, generator, limit=1, image_root=image_root, progress=False)
    assert (first.skipped, first.kept + first.rejected) == (0, 1) and len(finished_ids(out)) == 1
    assert not (out / "dataset").exists()  # the final forms wait until every caption is done
    second = synthesize(captions, out, generator, concurrency=2, image_root=image_root, progress=False)
    assert (second.skipped, second.kept + second.rejected) == (1, 1)
    check_synthesis_output(out, ids, processor)


@pytest.mark.slow
def test_synthesis_cli_killed_mid_run_and_resumed(served_smollm2, tmp_path, image_root, processor):
    url, model = served_smollm2
    captions, ids = caption_file(tmp_path, 3)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "hf_medvlm.data", "synthesize", "--captions", str(captions), "--out", str(out),
        "--endpoint", url, "--model", model, "--concurrency", "1", "--max-tokens", "64", "--temperature", "0",
        "--no-progress",
    ]
    run = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not finished_ids(out) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        output = run.stdout.read().decode() if run.poll() is not None else ""
        assert finished_ids(out), f"no record finished before the kill: {run.poll()} {output[-2000:]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)  # killed mid-run, as a crash or a cancelled job would be
        run.wait()
    before = finished_ids(out)
    assert len(before) < len(ids)

    generator = ChatEndpoint(url, model, max_tokens=64, temperature=0, max_retries=1, backoff=0.5)
    result = synthesize(captions, out, generator, concurrency=2, image_root=image_root, progress=False)
    assert result.skipped == len(before) and result.kept + result.rejected == len(ids) - len(before)
    check_synthesis_output(out, ids, processor)


def test_local_generator_through_a_transformers_pipeline(smollm2_folder, tmp_path):
    captions, ids = caption_file(tmp_path, 1)
    out = tmp_path / "out"
    assert data_main([
        "synthesize", "--captions", str(captions), "--out", str(out), "--local", str(smollm2_folder),
        "--max-tokens", "48", "--temperature", "0", "--no-progress",
    ]) == 0
    kept, rejected = read_jsonl(out / "conversations.jsonl"), read_jsonl(out / "rejected.jsonl")
    assert [r["id"] for r in kept + rejected] == ids
    assert all(r["generator"] == smollm2_folder.name for r in kept + rejected)
    assert all(r["reason"] in REJECTION_REASONS and r["reply"] is not None for r in rejected)
