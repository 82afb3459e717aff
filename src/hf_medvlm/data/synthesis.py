"""LLM-synthesised instruction conversations from figure captions (the LLaVA-Med / Llama3-Med recipe)."""

import hashlib
import json
import os
import random
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .prompts import FEW_SHOT_EXAMPLES, synthesis_messages
from .records import DataReport, read_records

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
ROLE_MARKER = re.compile(
    r"^[\s>*_#-]*(user|assistant|human|gpt|question|answer|q|a)[\s*_]*:[\s*_]*", re.IGNORECASE | re.MULTILINE
)
QUESTION_ROLES = {"user", "human", "question", "q"}
SOURCE_WORDS = re.compile(r"\b(caption\w*|context\w*|mentioned)\b", re.IGNORECASE)
MISSING_IMAGE_PHRASES = (
    "cannot see the image", "can't see the image", "cannot view the image", "unable to view", "unable to see the image",
    "access to the image", "access to the actual image", "without seeing the image", "as an ai",
)


class SynthesisError(RuntimeError):
    """A generator failed for good (after its retries); what was finished before stays in the output."""

    def __init__(self, message, result=None):
        super().__init__(message)
        self.result = result


@dataclass
class Reply:
    text: str
    truncated: bool = False  # the generator stopped at its token limit


def _backoff_sleep(backoff: float, attempt: int, retry_after=None) -> None:
    delay = backoff * 2**attempt
    if retry_after is not None:
        try:
            delay = max(delay, min(float(retry_after), 60.0))
        except ValueError:
            pass
    # a little jitter so concurrent workers do not retry in lockstep
    time.sleep(delay * (1 + 0.1 * random.random()))


class ChatEndpoint:
    """
    A generator behind any OpenAI-compatible chat endpoint (vLLM, TGI, `transformers serve`, hosted APIs), called
    through the `openai` client with our own retries. The key comes from `api_key`, else from the environment:
    `api_key_env`, by default `HF_TOKEN` for Hugging Face hosts and `OPENAI_API_KEY` elsewhere.
    """

    def __init__(
        self, endpoint: str, model: str, *, name: str | None = None, weight: float = 1.0, api_key: str | None = None,
        api_key_env: str | None = None, max_tokens: int = 1024, temperature: float = 0.7, timeout: float = 300.0,
        max_retries: int = 4, backoff: float = 2.0,
    ):
        base = endpoint.rstrip("/")
        self.base_url = base[: -len("/chat/completions")] if base.endswith("/chat/completions") else base
        self.url = self.base_url + "/chat/completions"
        self.model, self.name, self.weight = model, name or model, float(weight)
        host = urlparse(self.url).hostname or ""
        if api_key_env is None:
            api_key_env = "HF_TOKEN" if host.endswith(("huggingface.co", "hf.space")) else "OPENAI_API_KEY"
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.max_tokens, self.temperature, self.timeout = max_tokens, temperature, timeout
        self.max_retries, self.backoff = max_retries, backoff
        self._client = None
        self._client_lock = threading.Lock()

    def __repr__(self):  # never shows the key
        return f"ChatEndpoint(name={self.name!r}, url={self.url!r}, model={self.model!r}, weight={self.weight})"

    def _openai(self):
        from openai import OpenAI

        with self._client_lock:
            if self._client is None:
                # retries are ours (bounded, logged in the final error), so the client's own are off
                self._client = OpenAI(
                    base_url=self.base_url, api_key=self._api_key or "unused", max_retries=0, timeout=self.timeout
                )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __call__(self, messages: list[dict]) -> Reply:
        import openai

        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                completion = self._openai().chat.completions.create(
                    model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=self.temperature
                )
                choice = completion.choices[0]
            except openai.APIStatusError as error:
                last = f"HTTP {error.status_code}: {str(error)[:300]}"
                if error.status_code not in RETRY_STATUS:  # a wrong model name or key does not heal
                    raise SynthesisError(f"generator {self.name!r}: {self.url} answered {last}") from None
                retry_after = error.response.headers.get("retry-after")
            except openai.APIConnectionError as error:  # refused, reset, timed out, name not resolved
                cause = error.__cause__
                last = f"{type(error).__name__}: {error}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
            except (openai.APIResponseValidationError, IndexError, AttributeError) as error:
                last = f"unexpected response: {error}"
            else:
                return Reply(choice.message.content or "", truncated=choice.finish_reason == "length")
            if attempt < self.max_retries:
                _backoff_sleep(self.backoff, attempt, retry_after)
        raise SynthesisError(
            f"generator {self.name!r}: {self.url} failed after {self.max_retries + 1} attempts; last error: {last}"
        )


class LocalGenerator:
    """A generator running a local chat model through a transformers `text-generation` pipeline (one call at a time)."""

    def __init__(
        self, model, *, name: str | None = None, weight: float = 1.0, max_tokens: int = 1024, temperature: float = 0.7,
        device=None,
    ):
        self.model, self.weight, self.device = model, float(weight), device
        self.name = name or (Path(str(model)).name if not isinstance(model, str) or os.path.exists(model) else model)
        self.max_tokens, self.temperature = max_tokens, temperature
        self._pipeline = None
        self._lock = threading.Lock()  # a pipeline holds one model; calls from worker threads take turns

    def __repr__(self):
        return f"LocalGenerator(name={self.name!r}, model={str(self.model)!r}, weight={self.weight})"

    def __call__(self, messages: list[dict]) -> Reply:
        with self._lock:
            if self._pipeline is None:
                from transformers import pipeline

                self._pipeline = pipeline("text-generation", model=str(self.model), device=self.device)
            sampling = {"do_sample": False}
            if self.temperature > 0:
                sampling = {"do_sample": True, "temperature": self.temperature}
            tokenizer = self._pipeline.tokenizer
            prompt = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            output = self._pipeline(messages, max_new_tokens=self.max_tokens, return_tensors=True, **sampling)[0]
            ids = list(output["generated_token_ids"])[len(prompt["input_ids"]):]
            if ids and ids[-1] == tokenizer.eos_token_id:
                ids = ids[:-1]
                truncated = False
            else:
                truncated = len(ids) >= self.max_tokens
            text = tokenizer.decode(ids, skip_special_tokens=True)
        return Reply(text, truncated=truncated)

    def close(self) -> None:
        self._pipeline = None


def parse_generator_spec(spec: str, **defaults):
    """A generator from `model=NAME,endpoint=URL[,weight=W,name=N,api_key_env=VAR]` or `local=PATH[,weight=W,...]`."""
    fields = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"generator spec {spec!r}: expected key=value pairs separated by commas, got {part!r}")
        fields[key.strip().replace("-", "_")] = value.strip()
    options = dict(defaults)
    if "weight" in fields:
        options["weight"] = float(fields.pop("weight"))
    if "name" in fields:
        options["name"] = fields.pop("name")
    if "local" in fields:
        local = fields.pop("local")
        options.pop("api_key_env", None)
        if fields:
            raise ValueError(f"generator spec {spec!r}: unknown keys {sorted(fields)} for a local generator")
        return LocalGenerator(local, **options)
    if "endpoint" not in fields or "model" not in fields:
        raise ValueError(f"generator spec {spec!r}: needs endpoint= and model= (or local=)")
    endpoint, model = fields.pop("endpoint"), fields.pop("model")
    if "api_key_env" in fields:
        options["api_key_env"] = fields.pop("api_key_env")
    if fields:
        raise ValueError(f"generator spec {spec!r}: unknown keys {sorted(fields)}")
    return ChatEndpoint(endpoint, model, **options)


def assign_generator(record_id: str, generators, seed: int = 0):
    """The generator of one record, by weight: a stable hash of (seed, id), so a resumed run keeps the same mix."""
    total = sum(generator.weight for generator in generators)
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * total
    for generator in generators:
        point -= generator.weight
        if point < 0:
            return generator
    return generators[-1]


def parse_conversation(reply: str, *, truncated: bool = False, min_turns: int = 2):
    """
    `([(question, answer), ...], None)` for a reply that follows the rules, `(None, (reason, detail))` otherwise.
    A reply cut at the token limit loses its last exchange, which may be unfinished.
    """
    markers = list(ROLE_MARKER.finditer(reply))
    if not markers:
        return None, ("no_turns", "no line starts with 'User:' or 'Assistant:'")
    turns = []
    for marker, following in zip(markers, markers[1:] + [None]):
        role = "user" if marker.group(1).lower() in QUESTION_ROLES else "assistant"
        text = reply[marker.end(): following.start() if following else len(reply)].strip()
        turns.append((role, text))
    roles = [role for role, _ in turns]
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2):
        return None, ("non_alternating_turns", f"turn roles {roles} do not alternate User/Assistant")
    if truncated:
        turns = turns[: (len(turns) - 1) // 2 * 2]
    elif len(turns) % 2:
        return None, ("empty_answer", "the last question has no answer")
    exchanges = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns), 2)]
    for number, (question, answer) in enumerate(exchanges, start=1):
        if not question:
            return None, ("empty_question", f"question {number} is empty")
        if not answer:
            return None, ("empty_answer", f"answer {number} is empty")
    questions = [" ".join(question.lower().split()) for question, _ in exchanges]
    if len(set(questions)) < len(questions):
        return None, ("repeated_question", "the same question is asked more than once")
    if len(exchanges) < min_turns:
        note = " after dropping the exchange cut at the token limit" if truncated else ""
        return None, ("too_few_turns", f"{len(exchanges)} question-answer turn(s){note}; at least {min_turns} required")
    for number, (question, answer) in enumerate(exchanges, start=1):
        for speaker, text in (("question", question), ("answer", answer)):
            found = SOURCE_WORDS.search(text)
            if found:
                return None, ("mentions_source", f"{speaker} {number} says {found.group(0)!r}")
            lowered = text.lower()
            for phrase in MISSING_IMAGE_PHRASES:
                if phrase in lowered:
                    return None, ("refers_to_missing_image", f"{speaker} {number} says {phrase!r}")
    return exchanges, None


def _caption_record(record: dict, index: int) -> dict:
    """A captions-file record in one shape: LLaVA-Med's (`pair_id`, `fig_caption`, `in_text_mention`) or plain."""
    record_id = str(record.get("pair_id") or record.get("id") or f"record-{index}")
    mentions = record.get("in_text_mention", record.get("mentions")) or []
    if isinstance(mentions, str):
        mentions = [mentions]
    mentions = [m.get("tokens", "") if isinstance(m, dict) else str(m) for m in mentions]
    return {
        "id": record_id,
        "caption": record.get("fig_caption", record.get("caption")),
        "mentions": mentions,
        "label": record.get("fig_label") or None,
        "image": record.get("image") or f"{record_id}.jpg",  # LLaVA-Med names figures after their pair id
        "domain": record.get("domain"),
    }


class JsonlLog:
    """An append-only JSONL file, flushed after every record; reopening drops a line cut short by a killed run."""

    def __init__(self, path):
        self.path = Path(path)
        self.records = []
        if self.path.exists():
            data = self.path.read_bytes()
            good = 0
            for line in data.splitlines(keepends=True):
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("unterminated line")
                    if line.strip():
                        self.records.append(json.loads(line))
                except ValueError:
                    break
                good += len(line)
            if good < len(data):
                with self.path.open("r+b") as handle:
                    handle.truncate(good)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")

    def ids(self) -> set:
        return {str(record["id"]) for record in self.records}

    def append(self, record: dict) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        self.records.append(record)

    def close(self) -> None:
        self._handle.close()


@dataclass
class SynthesisResult:
    """Counts of one run, and the report over everything in the output folder."""

    out: Path
    total: int
    skipped: int
    kept: int = 0
    rejected: int = 0
    by_generator: dict = field(default_factory=dict)
    report: DataReport | None = None
    dataset: object = None

    def summary(self) -> str:
        return (
            f"{self.total} captions: {self.skipped} finished before, {self.kept} kept and {self.rejected} "
            "rejected now; "
            + (self.report.summary() if self.report else "")
        )


def _as_generators(generators):
    if generators is None:
        raise ValueError("give at least one generator (an endpoint and model, a local model, or generator specs)")
    generators = list(generators) if isinstance(generators, (list, tuple)) else [generators]
    if not generators:
        raise ValueError("give at least one generator")
    names = [generator.name for generator in generators]
    if len(set(names)) != len(names):
        raise ValueError(f"generator names must differ (they label every record): {names}; set name=...")
    if any(generator.weight < 0 for generator in generators) or sum(g.weight for g in generators) <= 0:
        raise ValueError(f"generator weights must be >= 0 with a positive sum, got {[g.weight for g in generators]}")
    return generators


def synthesize(
    captions, out, generators, *, concurrency: int = 4, limit: int | None = None, use_mentions: bool = True,
    few_shot=FEW_SHOT_EXAMPLES, min_turns: int = 2, seed: int = 0, image_root=None, strict: bool = False,
    progress: bool = True,
) -> SynthesisResult:
    """
    Write one conversation per caption record into `out/conversations.jsonl` (LLaVA-Med layout, flushed per record)
    and every rejected reply into `out/rejected.jsonl` (id, reason, reply). A rerun skips the ids already in either
    file. `generators` share the records by weight. `limit` caps how many new records this run sends. When all are
    finished, writes `report.json`, `conversations.json` and, with `image_root`, the datasets form under `dataset/`.
    """
    from tqdm.auto import tqdm

    generators = _as_generators(generators)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    raw = read_records(captions) if isinstance(captions, (str, Path)) else list(captions)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kept_log, rejected_log = JsonlLog(out / "conversations.jsonl"), JsonlLog(out / "rejected.jsonl")
    finished = kept_log.ids() | rejected_log.ids()

    records, duplicates, seen = [], [], set()
    for index, item in enumerate(raw):
        record = _caption_record(item, index)
        if record["id"] in seen:
            duplicates.append(record["id"])
            continue
        seen.add(record["id"])
        records.append(record)
    pending = [record for record in records if record["id"] not in finished]
    result = SynthesisResult(out=out, total=len(records), skipped=len(records) - len(pending))
    if limit is not None:
        pending = pending[:limit]

    def finish(record, generator, reply: Reply | None, problem=None):
        if problem is None:
            exchanges, problem = parse_conversation(reply.text, truncated=reply.truncated, min_turns=min_turns)
        if problem is not None:
            rejected_log.append(
                {"id": record["id"], "generator": generator.name if generator else None, "reason": problem[0],
                 "detail": problem[1], "reply": reply.text if reply else None}
            )
            result.rejected += 1
        else:
            turns = []
            for number, (question, answer) in enumerate(exchanges):
                turns.append({"from": "human", "value": ("<image>\n" if number == 0 else "") + question})
                turns.append({"from": "gpt", "value": answer})
            entry = {"id": record["id"], "image": record["image"], "generator": generator.name, "conversations": turns}
            if record["domain"] is not None:
                entry["domain"] = record["domain"]
            kept_log.append(entry)
            result.kept += 1
        if generator is not None:
            result.by_generator[generator.name] = result.by_generator.get(generator.name, 0) + 1

    failure = None
    bar = tqdm(total=len(pending), desc="synthesize", unit="record", disable=not progress)
    try:
        queue = iter(pending)
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            running = {}
            while True:
                while failure is None and len(running) < concurrency:
                    record = next(queue, None)
                    if record is None:
                        break
                    if not isinstance(record["caption"], str) or not record["caption"].strip():
                        finish(record, None, None, ("empty_caption", "the record has no caption text"))
                        bar.update()
                        continue
                    generator = assign_generator(record["id"], generators, seed)
                    messages = synthesis_messages(
                        record["caption"], record["mentions"], record["label"], few_shot, use_mentions=use_mentions
                    )
                    running[pool.submit(generator, messages)] = (record, generator)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    record, generator = running.pop(future)
                    try:
                        reply = future.result()
                    except Exception as error:  # kept for the message; in-flight requests still finish and are saved
                        failure = failure or error
                        continue
                    finish(record, generator, reply)
                    bar.update()
                    bar.set_postfix(kept=result.kept, rejected=result.rejected)
    finally:
        bar.close()
        kept_log.close()
        rejected_log.close()
        for generator in generators:
            generator.close()

    report = DataReport(source=Path(captions).name if isinstance(captions, (str, Path)) else "captions")
    report.total = len(records) + len(duplicates)
    ids = {record["id"] for record in records}
    for entry in rejected_log.records:
        if entry["id"] in ids:
            report.reject(entry["id"], entry["reason"], entry.get("detail", ""))
    for record_id in duplicates:
        report.reject(record_id, "duplicate_id", "an earlier caption record has the same id")
    kept_entries = [entry for entry in kept_log.records if entry["id"] in ids]
    report.kept = len(kept_entries)
    result.report = report
    report.write(out / "report.json")

    if failure is not None:
        message = failure if isinstance(failure, SynthesisError) else f"{type(failure).__name__}: {failure}"
        raise SynthesisError(
            f"{message}. Stopped; {len(kept_log.records) + len(rejected_log.records)} finished records are kept in "
            f"{out}, a rerun resumes after them", result,
        ) from failure
    report.check(strict)
    if report.kept + len(report.rejected) == report.total:  # every caption is done: write the final forms
        (out / "conversations.json").write_text(json.dumps(kept_entries, indent=1, ensure_ascii=False) + "\n")
        if image_root is not None:
            from .llava_med import from_llava_med

            mix = {}
            for entry in kept_entries:
                mix[entry["generator"]] = mix.get(entry["generator"], 0) + 1
            result.dataset, _ = from_llava_med(
                out / "conversations.json", image_root, out=out / "dataset",
                card_kwargs={"kind": "synthetic", "generators": mix, "source": report.source},
            )
    return result
