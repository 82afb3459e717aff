"""The synthesis prompt: instructions, few-shot examples and the per-figure query (LLaVA-Med / Llama3-Med rules)."""

SYSTEM_PROMPT = """\
You write training conversations for an assistant that discusses figures from biomedical research articles.

For each request you get the caption of one figure and, sometimes, sentences from the article that refer to it. \
You never see the figure itself. Write a conversation in which a User asks about the figure and an Assistant \
answers, both speaking as if they were looking at the picture together.

Rules:
1. Write at least two question-and-answer exchanges; three or more when the figure offers enough to talk about.
2. Ask about what is visible: the kind of image, anatomy, tissue, staining, structures, shapes, positions, \
differences between panels.
3. Never use the words "caption", "context" or "mentioned", and never point to a text you were given. Talk \
about "the image" instead.
4. Leave out exact numbers, dates, names of people or places, and abbreviations that only the text could reveal.
5. Make every question different in kind from the others.
6. Answer with care and without overconfidence. Give no medical advice and no diagnosis for a person; where it \
matters, suggest asking a healthcare professional.

Format: put each question on a line that starts with "User:" and each answer on a line that starts with \
"Assistant:". Write nothing before the first question and nothing after the last answer."""

# Written for this package: one radiology and one pathology figure, each caption -> conversation.
FEW_SHOT_EXAMPLES = (
    {
        "label": "Figure 2",
        "caption": "Axial contrast-enhanced CT of the abdomen showing a large heterogeneously enhancing mass arising "
        "from the left kidney, with central low attenuation consistent with necrosis.",
        "mentions": ["The tumour displaced adjacent small bowel loops medially (Figure 2)."],
        "conversation": [
            ("What kind of image is this?",
             "It is a cross-sectional CT image of the abdomen taken after an intravenous contrast agent, which makes "
             "blood vessels and well-supplied tissue look brighter."),
            ("What stands out on the left side of the patient?",
             "A large mass grows from the left kidney. It brightens unevenly, and its darker centre suggests tissue "
             "that has lost its blood supply and died."),
            ("Does the mass affect anything around it?",
             "The nearby loops of bowel look pushed toward the middle of the abdomen. What the mass is can only be "
             "judged by a radiologist with the whole study and the patient's history, so these findings belong in a "
             "conversation with the care team."),
        ],
    },
    {
        "label": "Figure 4",
        "caption": "H&E stained section of a lymph node (x200) showing effacement of the normal architecture by "
        "sheets of large atypical lymphoid cells with prominent nucleoli.",
        "mentions": [],
        "conversation": [
            ("How was this tissue stained?",
             "It looks like a standard hematoxylin and eosin stain: nuclei are blue to purple, while cytoplasm and "
             "connective tissue are pink."),
            ("Is the normal organisation of the tissue preserved?",
             "No. The usual pattern of follicles and sinuses is not visible; the tissue has been replaced by sheets "
             "of densely packed cells."),
            ("What do those cells look like?",
             "They are large, with irregular nuclei and conspicuous nucleoli, which pathologists regard as atypical. "
             "A firm interpretation needs a pathologist and usually additional stains."),
        ],
    },
)


def figure_query(caption: str, mentions=(), label: str | None = None) -> str:
    """The user message that hands one figure's text to the generator."""
    heading = f"{label}: " if label else ""
    text = f"Figure caption:\n{heading}{caption.strip()}"
    mentions = [sentence.strip() for sentence in mentions if sentence and sentence.strip()]
    if mentions:
        text += "\n\nSentences of the article that refer to the figure:\n" + "\n".join(f"- {s}" for s in mentions)
    return text


def conversation_text(conversation) -> str:
    return "\n".join(f"User: {question}\nAssistant: {answer}" for question, answer in conversation)


def synthesis_messages(
    caption: str, mentions=(), label: str | None = None, few_shot=FEW_SHOT_EXAMPLES, use_mentions: bool = True
) -> list[dict]:
    """Chat messages for one figure: the rules, then each example as a user/assistant pair, then the query."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example in few_shot:  # examples show in-text mentions only when the query has them too
        query = figure_query(example["caption"], example["mentions"] if use_mentions else (), example["label"])
        messages.append({"role": "user", "content": query})
        messages.append({"role": "assistant", "content": conversation_text(example["conversation"])})
    messages.append({"role": "user", "content": figure_query(caption, mentions if use_mentions else (), label)})
    return messages
