"""Radiology report generation (LLaVA-Rad): findings from images, lexical scores, and a CheXprompt-style LLM judge.

The judge is any LLM behind an OpenAI-compatible `/v1/chat/completions` endpoint, called through
`hf_medvlm.data.synthesis.ChatEndpoint` (or any `client(messages)` returning text). For each generated report it counts
clinically significant and clinically insignificant errors against the reference report. Replies are parsed
strictly (a JSON object, "significant: N" lines or "N significant errors" phrases); a reply without both counts, or
with conflicting ones, is recorded as unparseable with the reason, never filled in.
"""

import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .benchmarks import load_split
from .metrics import report_metrics
from .runner import _repair_jsonl, _write_json, distributed_state, read_jsonl, run_generation

DEFAULT_FINDINGS_PROMPT = "Describe the findings of the chest X-ray."

JUDGE_SYSTEM_PROMPT = (
    "You are a board-certified radiologist who audits machine-written radiology reports against the report a "
    "radiologist wrote for the same study."
)
JUDGE_PROMPT = """Compare the candidate report with the reference report and count the candidate's errors.

An error is one of:
1. a finding the reference does not support;
2. a finding of the reference that the candidate leaves out;
3. a wrong anatomical location or position of a finding;
4. a wrong severity of a finding;
5. a comparison with an earlier study that the reference does not make;
6. a change since an earlier study that the reference states and the candidate leaves out.

Count each error once and label it clinically significant (it could change diagnosis or patient management) or
clinically insignificant (it could not). Wording that keeps the meaning is not an error.

Reference report:
{reference}

Candidate report:
{candidate}

Answer with one JSON object and nothing else:
{{"significant_errors": <number>, "insignificant_errors": <number>}}"""


def judge_messages(reference: str, candidate: str) -> list:
    """The chat messages that ask the judge for the two error counts of one candidate report."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
        {"role": "user", "content": JUDGE_PROMPT.format(reference=reference.strip(), candidate=candidate.strip())},
    ]


# ------------------------------------------------------------------------------------------------------- parsing

_THINKING = re.compile(r"<think>.*?(</think>|$)", re.IGNORECASE | re.DOTALL)
_MARKUP = re.compile(r"[*`#\"']")
_COUNT = re.compile(
    r"\b(?P<kind>(?:clinically[ \t_-]+)?(?:in|non[ \t_-]?)?significant)(?:[ \t_-]+errors?)?(?:[ \t_-]+count)?"
    r"[ \t]*[:=][ \t]*(?P<value>\d+|none|zero|no)\b",  # on one line: "errors:\n1. ..." starts a list
    re.IGNORECASE,
)
# "1 clinically significant error", "no insignificant errors"; a number that is the value of "...: N" is not one
_COUNT_BEFORE = re.compile(
    r"(?<![:=])(?<![:=] )\b(?P<value>\d+|no|zero)[ \t]+"
    r"(?P<kind>(?:clinically[ \t_-]+)?(?:in|non[ \t_-]?)?significant)[ \t_-]+errors?\b",
    re.IGNORECASE,
)
_WORD_ZERO = {"none", "zero", "no"}


def _kind(key: str):
    letters = re.sub(r"[^a-z]", "", key.lower())
    if "insignificant" in letters or "nonsignificant" in letters:
        return "insignificant"
    if "significant" in letters:
        return "significant"
    return None


def _json_count(value):
    """A count from a JSON value: a non-negative integer (or integral float / digit string), or a list of errors."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, list):  # the judge listed its errors instead of counting them
        return len(value)
    return None


def _json_objects(text: str):
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def _from_json(text: str):
    """`(counts, problem)` from the JSON objects in a reply; `(None, None)` when none names the counts."""
    results, problem = [], None
    for value in _json_objects(text):
        items = list(value.items())
        for nested in value.values():  # {"errors": {"significant": 1, ...}}
            if isinstance(nested, dict):
                items += list(nested.items())
        counts = {}
        for key, item in items:
            kind = _kind(str(key))
            if kind is None:
                continue
            count = _json_count(item)
            if count is None:
                problem = ("bad_value", f"{key!r} is {item!r}, not a count")
                continue
            if counts.get(kind, count) != count:
                problem = ("conflicting", f"two different {kind} counts in one object")
                continue
            counts[kind] = count
        if len(counts) == 2:
            results.append(counts)
        elif counts and problem is None:
            missing = {"significant", "insignificant"} - set(counts)
            problem = (f"missing_{missing.pop()}", "the JSON object gives only one of the two counts")
    if results:
        if any(result != results[0] for result in results):
            return None, ("conflicting", f"JSON objects disagree: {results}")
        return results[0], None
    return None, problem


def _from_lines(text: str):
    found = {"significant": set(), "insignificant": set()}
    plain = _MARKUP.sub("", text)
    for match in [*_COUNT.finditer(plain), *_COUNT_BEFORE.finditer(plain)]:
        value = match.group("value").lower()
        found[_kind(match.group("kind"))].add(0 if value in _WORD_ZERO else int(value))
    for kind, values in found.items():
        if len(values) > 1:
            return None, ("conflicting", f"{kind} errors given as {sorted(values)}")
    counts = {kind: values.pop() for kind, values in found.items() if values}
    if len(counts) == 2:
        return counts, None
    if counts:
        missing = ({"significant", "insignificant"} - set(counts)).pop()
        return None, (f"missing_{missing}", f"no count of {missing} errors")
    return None, ("no_counts", "neither a JSON object with the counts nor 'significant: N' / 'N significant errors'")


def parse_judgement(reply) -> dict:
    """
    `{"status": "parsed", "significant": N, "insignificant": M, "reason": None, "detail": None}` from a judge reply,
    or `status="unparseable"` with both counts None and a `reason` (no_counts, missing_significant,
    missing_insignificant, conflicting, bad_value, empty_reply) and a `detail`.
    """
    text = _THINKING.sub("", reply or "").strip()
    counts, problem = (None, ("empty_reply", "the judge returned no text")) if not text else _from_json(text)
    if counts is None and (problem is None or problem[0] in ("missing_significant", "missing_insignificant")):
        counts, line_problem = _from_lines(text)
        problem = problem if counts is None and problem is not None else line_problem
    if counts is None:
        return {"status": "unparseable", "significant": None, "insignificant": None, "reason": problem[0],
                "detail": problem[1]}
    return {"status": "parsed", "significant": counts["significant"], "insignificant": counts["insignificant"],
            "reason": None, "detail": None}


def summarize_judgements(judgements) -> dict:
    """Totals over judged reports: how many parsed / unparseable (by reason), error sums and means over parsed ones."""
    judgements = list(judgements)
    parsed = [j for j in judgements if j["status"] == "parsed"]
    count = len(parsed)
    significant = sum(j["significant"] for j in parsed)
    insignificant = sum(j["insignificant"] for j in parsed)
    clean = sum(1 for j in parsed if j["significant"] == 0)
    return {
        "reports": len(judgements),
        "parsed": count,
        "unparseable": len(judgements) - count,
        "unparseable_reasons": dict(Counter(j["reason"] for j in judgements if j["status"] != "parsed")),
        "significant_errors": significant,
        "insignificant_errors": insignificant,
        "mean_significant_errors": significant / count if count else None,
        "mean_insignificant_errors": insignificant / count if count else None,
        "reports_without_significant_errors": clean,
        "reports_without_significant_errors_pct": 100.0 * clean / count if count else None,
    }


# ------------------------------------------------------------------------------------------------------ judging


def judge_reports(records, client, out=None, *, concurrency=1, progress=True) -> dict:
    """
    Judge each `{"id", "reference", "prediction"}` record with `client(messages)`, which returns the reply text or an
    object with `.text` (and `.truncated`), such as `hf_medvlm.data.synthesis.ChatEndpoint`.
    With `out` (a JSONL path) judgements are appended as they arrive and a rerun skips the ids this judge (same
    `client.model`) already judged. Returns `{"summary": summarize_judgements(...), "judgements": [...]}` in the
    order of `records`.
    """
    from tqdm.auto import tqdm

    records = list(records)
    judge_model = getattr(client, "model", None)
    done = {}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            _repair_jsonl(out)
            done = {str(j["id"]): j for j in read_jsonl(out) if j.get("judge") == judge_model}
    pending = [record for record in records if str(record["id"]) not in done]

    def judge(record):
        reply = client(judge_messages(record["reference"], record["prediction"]))
        text = reply if isinstance(reply, str) else getattr(reply, "text", "")
        judgement = {"id": str(record["id"]), "judge": judge_model, **parse_judgement(text), "reply": text,
                     "truncated": bool(getattr(reply, "truncated", False))}
        if judgement["status"] != "parsed" and judgement["truncated"]:
            judgement["detail"] += " (the reply stopped at the token limit)"
        return judgement

    handle = out.open("a", encoding="utf-8") if out is not None else None
    bar = tqdm(total=len(pending), unit="report", desc="judge", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        for future in as_completed([pool.submit(judge, record) for record in pending]):
            judgement = future.result()
            done[judgement["id"]] = judgement
            if handle is not None:
                handle.write(json.dumps(judgement, ensure_ascii=False) + "\n")
                handle.flush()
            bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a failure, queued reports are not sent
        bar.close()
        if handle is not None:
            handle.close()
    judgements = [done[str(record["id"])] for record in records]
    return {"summary": summarize_judgements(judgements), "judgements": judgements}


# --------------------------------------------------------------------------------------------------- generation


def load_report_dataset(
    data, split="test", *, image_column="image", report_column="findings", id_column=None, cache_dir=None
):
    """
    Image-report pairs as a `datasets.Dataset` with columns `id`, `image`, `reference`, from a Hub id, a folder or a
    parquet/JSON/CSV file (see `load_split`). Rows with an empty report are dropped (many studies have no findings).
    """
    import datasets

    table = load_split(data, split, cache_dir, image_column)
    missing = [c for c in (image_column, report_column, id_column) if c is not None and c not in table.column_names]
    if missing:
        raise ValueError(f"{data}: missing column(s) {missing}; found {table.column_names}")
    if not isinstance(table.features[image_column], datasets.Image):
        raise ValueError(f"{data}: column {image_column!r} holds {table.features[image_column]}, not images")

    def standardise(batch, indices):
        ids = batch[id_column] if id_column else indices
        return {"id": [str(value) for value in ids], "reference": [str(r or "").strip() for r in batch[report_column]]}

    table = table.map(standardise, batched=True, with_indices=True, desc="reports")
    if image_column != "image":
        if "image" in table.column_names:
            table = table.remove_columns("image")
        table = table.rename_column(image_column, "image")
    table = table.select_columns(["id", "image", "reference"])
    return table.filter(lambda batch: [bool(r) for r in batch["reference"]], batched=True, desc="non-empty reports")


def generate_reports(
    model_dir, data, split="test", limit=None, batch_size=4, out_dir="outputs/eval-reports", *,
    image_column="image", report_column="findings", id_column=None, prompt=DEFAULT_FINDINGS_PROMPT,
    max_new_tokens=256, judge=None, judge_concurrency=1, dtype=None, trust_remote_code=False, callback=None,
    progress=True, cache_dir=None,
):
    """
    Generate findings for each image (resumable, split over accelerate processes like `evaluate_model`), score them
    against the references with BLEU and ROUGE (`report_metrics`) and, with a `judge` client, count clinically
    significant and insignificant errors. Writes into `out_dir/reports-{split}/`: `shards/`, `predictions.jsonl`,
    `judgements.jsonl` and `scores.json`. Returns the scores on the main process, None elsewhere.
    """
    state = distributed_state()
    with state.main_process_first():
        pairs = load_report_dataset(
            data, split, image_column=image_column, report_column=report_column, id_column=id_column,
            cache_dir=cache_dir,
        )
    total = len(pairs)
    if limit is not None:
        pairs = pairs.select(range(min(limit, total)))
    run_dir = Path(out_dir) / f"reports-{split}"
    source = str(Path(data).resolve()) if Path(str(data)).exists() else str(data)
    records = run_generation(
        model_dir, pairs, run_dir, ("reference",), lambda row: prompt, batch_size=batch_size,
        max_new_tokens=max_new_tokens, settings={"prompt": prompt, "data": source, "split": split}, dtype=dtype,
        trust_remote_code=trust_remote_code, callback=callback, progress=progress,
    )
    if records is None:
        return None
    predictions = [record["prediction"] for record in records]
    references = [record["reference"] for record in records]
    scores = {
        "model_dir": str(model_dir), "split": split, "reports": len(records), "split_reports": total,
        "lexical": report_metrics(predictions, references),
    }
    if judge is not None:
        judged = judge_reports(records, judge, run_dir / "judgements.jsonl", concurrency=judge_concurrency,
                               progress=progress)
        scores["judge"] = {"model": getattr(judge, "model", repr(judge)), **judged["summary"]}
    _write_json(run_dir / "scores.json", scores)
    print(format_report_scores(scores))
    return scores


def format_report_scores(scores: dict) -> str:
    """A short text summary of `generate_reports`' scores."""
    lexical = scores["lexical"]
    lines = [
        f"{scores['reports']} reports ({scores['split']} split, {scores['split_reports']} in all)",
        f"BLEU {lexical['bleu']:.2f}  BLEU-1 {lexical['bleu_1']:.2f}  BLEU-4 {lexical['bleu_4']:.2f}  "
        f"ROUGE-1 {lexical['rouge_1']:.2f}  ROUGE-L {lexical['rouge_l']:.2f}",
    ]
    judge = scores.get("judge")
    if judge:
        lines.append(
            f"judge {judge['model']}: {judge['parsed']} parsed, {judge['unparseable']} unparseable "
            f"{judge['unparseable_reasons'] or ''}".rstrip()
        )
        if judge["parsed"]:
            lines.append(
                f"  clinically significant errors {judge['significant_errors']} "
                f"(mean {judge['mean_significant_errors']:.2f}), insignificant {judge['insignificant_errors']} "
                f"(mean {judge['mean_insignificant_errors']:.2f}); reports without significant errors "
                f"{judge['reports_without_significant_errors_pct']:.1f}%"
            )
    return "\n".join(lines)


__all__ = [
    "DEFAULT_FINDINGS_PROMPT",
    "JUDGE_PROMPT",
    "JUDGE_SYSTEM_PROMPT",
    "format_report_scores",
    "generate_reports",
    "judge_messages",
    "judge_reports",
    "load_report_dataset",
    "parse_judgement",
    "summarize_judgements",
]
