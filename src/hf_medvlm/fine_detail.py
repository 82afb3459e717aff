"""A procedural fine-detail set: CT-like phantom slices whose lesions only show at high resolution, deterministic by seed.

Each slice is a grey-level abdomen phantom (air, a fat rim, soft tissue, two organs, a vertebra) with smooth texture
and zero to three lesions. A lesion is a round focus (36 to 52 pixels across at the full size of 288) of fine
reticulation: diagonal stripes three pixels apart, swinging by 90 grey levels, with zero mean over every 3 x 3 block.
Averaged to the base scale (a third of the full size) the stripes cancel and the focus vanishes into the texture; at
full resolution it is plain to see. Whether a model can answer therefore depends on the resolution it sees, which is
what multi-scale tiling is meant to supply. A frozen, randomly initialised ViT already separates slices with and
without lesions from its 3-scale features but not from its base-scale features: `hf-medvlm bench fine-detail`
reports this linear probe beside the trained models (seed 0: 93.0% against 53.9% on 128 test slices).

Written by [`make_fine_detail_set`]:

    out_dir/images/{train,test}/NNNN.png   8-bit grey slices, `size` x `size`
    out_dir/captions.jsonl                 stage 1: {"image", "caption"}
    out_dir/conversations.jsonl            stage 2: {"images", "messages"}: presence, count and (one lesion) quadrant
    out_dir/test.jsonl                     evaluation: {"id", "image", "question", "answer", "kind"}
    out_dir/train.jsonl                    the same questions for the training slices
    out_dir/manifest.json                  seed, sizes, lesion positions per slice, question counts per kind

`test.jsonl` loads with `hf-medvlm eval --dataset fine-detail --data out_dir/test.jsonl`: "yes"/"no" answers are
closed questions, counts and quadrants open ones, as in the LLaVA-Med protocol.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

COUNT_WORDS = ("none", "one", "two", "three")
QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
QUESTIONS = {
    "presence": "Is there a lesion in this slice?",
    "count": "How many lesions are there?",
    "quadrant": "In which quadrant is the lesion?",
}
KINDS = tuple(QUESTIONS)
ALIGNMENT_PROMPT = "Describe the slice."
LESION_RADIUS = (18.0, 26.0)  # pixels at the full size of 288; scaled with `size`
LESION_CONTRAST = 60.0  # grey levels: the stripes run from +30 to -60
TEXTURE_STD = 7.0


def _smooth_noise(rng, size: int, grain: float) -> np.ndarray:
    """Unit-variance Gaussian noise low-passed in Fourier space to a grain of about `grain` pixels."""
    noise = rng.standard_normal((size, size))
    frequencies = np.fft.fftfreq(size)
    radius2 = frequencies[:, None] ** 2 + frequencies[None, :] ** 2
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2 * (np.pi * grain) ** 2 * radius2 / 4)))
    return smooth / smooth.std()


def _ellipse(size: int, cy, cx, ry, rx) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] + 0.5
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _disc_coverage(size: int, cy: float, cx: float, radius: float, supersample: int = 8) -> np.ndarray:
    """The share of each pixel a disc covers, by supersampling (anti-aliased lesions, no stair steps)."""
    top, left = max(int(cy - radius) - 1, 0), max(int(cx - radius) - 1, 0)
    bottom, right = min(int(cy + radius) + 2, size), min(int(cx + radius) + 2, size)
    offsets = (np.arange(supersample) + 0.5) / supersample
    ys = (np.arange(top, bottom)[:, None] + offsets[None, :]).reshape(-1)
    xs = (np.arange(left, right)[:, None] + offsets[None, :]).reshape(-1)
    inside = ((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2) <= radius**2
    coverage = np.zeros((size, size))
    coverage[top:bottom, left:right] = inside.reshape(bottom - top, supersample, right - left, supersample).mean((1, 3))
    return coverage


def _reticulation(size: int) -> np.ndarray:
    """Diagonal stripes of period 3 pixels, +1, +1, -2 (times 1/2): every 3 x 3 block sums to zero, so an area
    average to a third of the size cancels them exactly, while at full size they swing by 1.5."""
    return np.array([0.5, 0.5, -1.0])[np.indices((size, size)).sum(0) % 3]


def phantom_slice(seed: int, index: int, size: int = 288, lesions: int | None = None) -> tuple[Image.Image, list]:
    """One slice and its lesions `[{"y", "x", "radius", "quadrant"}]` (pixel centres), determined by `(seed, index)`.

    `lesions` forces the count (0-3); by default slices cycle through 0, 1, 0, 2, 0, 3, 0, 1, ...: half of them have
    none (presence is balanced), a quarter one, an eighth two and an eighth three.
    """
    if size < 96:
        raise ValueError(f"fine-detail slices need size >= 96 pixels, got {size}")
    rng = np.random.default_rng([seed, index])
    if lesions is None:
        lesions = (0, 1, 0, 2, 0, 3, 0, 1)[index % 8]
    if not 0 <= lesions <= 3:
        raise ValueError(f"a slice holds 0 to 3 lesions, got {lesions}")
    scale = size / 288
    centre = size / 2
    body_ry, body_rx = size * rng.uniform(0.36, 0.42), size * rng.uniform(0.43, 0.47)
    image = np.zeros((size, size))
    body = _ellipse(size, centre, centre, body_ry, body_rx)
    inner = _ellipse(size, centre, centre, body_ry - 6 * scale, body_rx - 6 * scale)
    image[body] = 85.0  # fat rim
    image[inner] = 118.0  # soft tissue
    liver = _ellipse(size, centre - 0.05 * size, centre - 0.16 * size, 0.17 * size, 0.14 * size) & inner
    spleen = _ellipse(size, centre - 0.08 * size, centre + 0.22 * size, 0.08 * size, 0.06 * size) & inner
    vertebra = _ellipse(size, centre + 0.26 * size, centre, 0.05 * size, 0.05 * size)
    image[liver] = 134.0
    image[spleen] = 128.0
    image[vertebra] = 225.0
    texture = TEXTURE_STD * _smooth_noise(rng, size, grain=3.0 * scale)
    image += np.where(body, texture, 0.3 * texture)

    # lesions: in soft tissue or organs, away from the vertebra, the rim and each other, one quadrant each
    found, quadrants = [], list(rng.permutation(4)[:lesions])
    allowed = inner & ~_ellipse(size, centre + 0.26 * size, centre, 0.09 * size, 0.09 * size)
    for quadrant in quadrants:
        for _ in range(200):
            y = rng.uniform(0.5, 1.0) * centre if quadrant < 2 else centre + rng.uniform(0.0, 0.5) * centre
            x = rng.uniform(0.5, 1.0) * centre if quadrant % 2 == 0 else centre + rng.uniform(0.0, 0.5) * centre
            # the lesion and its surroundings lie in tissue, clear of the quadrant borders
            clear = int((LESION_RADIUS[1] + 2) * scale)
            window = allowed[int(y) - clear:int(y) + clear + 1, int(x) - clear:int(x) + clear + 1]
            if min(abs(y - centre), abs(x - centre)) > clear and window.size and window.all():
                break
        else:  # pragma: no cover - the body always has room; a clear error rather than a wrong label if not
            raise RuntimeError(f"no room for a lesion in quadrant {QUADRANTS[quadrant]} of slice {index}")
        radius = rng.uniform(*LESION_RADIUS) * scale
        image += LESION_CONTRAST * _disc_coverage(size, y, x, radius) * _reticulation(size)
        found.append({"y": round(float(y), 2), "x": round(float(x), 2), "radius": round(float(radius), 3),
                      "quadrant": QUADRANTS[quadrant]})
    image += rng.normal(0.0, 1.5, image.shape)  # a little pixel noise on top of the texture
    picture = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), mode="L")
    return picture, found


def caption(lesions: list) -> str:
    """Stage-1 caption: the count and the quadrants, in the words the questions use."""
    if not lesions:
        return "An axial CT slice of the abdomen with no lesion."
    noun = "lesion" if len(lesions) == 1 else "lesions"
    where = " and ".join(lesion["quadrant"] for lesion in lesions)
    return f"An axial CT slice of the abdomen with {COUNT_WORDS[len(lesions)]} small reticular {noun}: {where}."


def questions(lesions: list) -> list:
    """`[(kind, question, answer)]` for one slice: presence and count always, quadrant when there is one lesion."""
    rows = [
        ("presence", QUESTIONS["presence"], "yes" if lesions else "no"),
        ("count", QUESTIONS["count"], COUNT_WORDS[len(lesions)]),
    ]
    if len(lesions) == 1:
        rows.append(("quadrant", QUESTIONS["quadrant"], lesions[0]["quadrant"]))
    return rows


def make_fine_detail_set(out_dir, train: int = 64, test: int = 32, size: int = 288, seed: int = 0,
                         progress: bool = True) -> dict:
    """Write the set described in the module docstring; returns its paths and the manifest.

    The same `(train, test, size, seed)` writes byte-identical files. Test slices use indices after the training ones,
    so no slice appears in both.
    """
    from tqdm.auto import tqdm

    if train < 1 or test < 1:
        raise ValueError(f"need at least one training and one test slice, got train={train}, test={test}")
    out_dir = Path(out_dir)
    for split in ("train", "test"):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    captions, conversations, rows = [], [], {"train": [], "test": []}
    slices = {"train": [], "test": []}
    plan = [("train", index) for index in range(train)] + [("test", train + index) for index in range(test)]
    for split, index in tqdm(plan, desc="fine-detail slices", unit="slice", disable=not progress):
        picture, lesions = phantom_slice(seed, index, size)
        name = f"images/{split}/{index:04d}.png"
        picture.save(out_dir / name)
        slices[split].append({"image": name, "lesions": lesions})
        asked = questions(lesions)
        rows[split] += [
            {"id": f"{index:04d}-{kind}", "image": name, "question": question, "answer": answer, "kind": kind}
            for kind, question, answer in asked
        ]
        if split == "train":
            captions.append({"image": name, "caption": caption(lesions)})
            messages = []
            for _, question, answer in asked:
                messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            conversations.append({"images": [name], "messages": messages})
    paths = {
        "images": out_dir / "images", "captions": out_dir / "captions.jsonl",
        "conversations": out_dir / "conversations.jsonl", "train": out_dir / "train.jsonl",
        "test": out_dir / "test.jsonl", "manifest": out_dir / "manifest.json",
    }
    for key, records in (("captions", captions), ("conversations", conversations), ("train", rows["train"]),
                         ("test", rows["test"])):
        paths[key].write_text("".join(json.dumps(record) + "\n" for record in records))
    manifest = {
        "seed": seed, "size": size, "train": train, "test": test,
        "lesion_radius_px": [r * size / 288 for r in LESION_RADIUS], "lesion_contrast": LESION_CONTRAST,
        "texture_std": TEXTURE_STD,
        "questions": {split: {kind: sum(1 for row in rows[split] if row["kind"] == kind) for kind in KINDS}
                      for split in rows},
        "slices": slices,
    }
    paths["manifest"].write_text(json.dumps(manifest, indent=1) + "\n")
    return {"paths": paths, "manifest": manifest}


def constant_baselines(records) -> dict:
    """Per question kind, the best score a model reaches by always giving one answer (the chance level to beat).

    `records`: rows with `kind` and `answer`. Presence: accuracy of the majority answer; count and quadrant: the share
    of questions whose answer is the most common one (the open recall such a model gets is at least this).
    """
    result = {}
    for kind in KINDS:
        answers = [record["answer"] for record in records if record["kind"] == kind]
        if answers:
            common = max(set(answers), key=answers.count)
            result[kind] = {"answer": common, "score": 100.0 * answers.count(common) / len(answers)}
    return result


def scores_by_kind(records) -> dict:
    """Scores per question kind from prediction records (`id` ending in `-<kind>`, `answer`, `prediction`), with the
    LLaVA-Med rules of `vqa_metrics`: presence is closed (`accuracy`), count and quadrant open (`recall`, plus
    `exact_match`). Each entry also has `questions`."""
    from .evaluation.metrics import vqa_metrics

    result = {}
    for kind in KINDS:
        rows = [record for record in records if str(record["id"]).rsplit("-", 1)[-1] == kind]
        if not rows:
            continue
        closed = kind == "presence"
        metrics = vqa_metrics([row["prediction"] for row in rows], [row["answer"] for row in rows],
                              ["closed" if closed else "open"] * len(rows))
        entry = {"questions": len(rows)}
        if closed:
            entry["accuracy"] = metrics["closed_accuracy"]
        else:
            entry.update(recall=metrics["open_recall"], exact_match=metrics["exact_match"])
        result[kind] = entry
    return result


def format_scores(rows: dict) -> str:
    """A markdown table of `{label: scores_by_kind(...)}`, one row per label."""
    header = "| model | presence accuracy | count recall | count exact | quadrant recall | quadrant exact |"
    lines = [header, "|---|---|---|---|---|---|"]
    for label, scores in rows.items():
        cells = []
        for kind, key in (("presence", "accuracy"), ("count", "recall"), ("count", "exact_match"),
                          ("quadrant", "recall"), ("quadrant", "exact_match")):
            value = scores.get(kind, {}).get(key)
            cells.append("/" if value is None else f"{value:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    counts = next(iter(rows.values()), {})
    lines.append("\n" + ", ".join(f"{kind}: {entry['questions']} questions" for kind, entry in counts.items())
                 + "; scores in %.")
    return "\n".join(lines)
