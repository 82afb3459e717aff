"""LlavaMedHiResProcessor with a real tokenizer (SmolLM2) feeding the model, TRL's collator and remote code."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from hf_medvlm import (
    LlavaMedHiResConfig,
    LlavaMedHiResForConditionalGeneration,
    LlavaMedHiResImageProcessor,
    LlavaMedHiResProcessor,
)

from conftest import TILE, TINY_CLIP, TINY_LLAMA, run_without_hf_medvlm

SCALES = [TILE, 2 * TILE, 3 * TILE]


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def processor(tokenizer):
    config = tiny_config(tokenizer)
    return LlavaMedHiResProcessor(
        image_processor=LlavaMedHiResImageProcessor(scales=SCALES),
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
    )


def tiny_config(tokenizer):
    text = dict(TINY_LLAMA, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    return LlavaMedHiResConfig(
        vision_config=TINY_CLIP,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scales=SCALES,
    )


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return LlavaMedHiResForConditionalGeneration(tiny_config(tokenizer)).eval()


def image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def chat(question, answer=None):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def test_each_placeholder_becomes_image_seq_length_tokens(processor, tokenizer):
    inputs = processor(images=[image(50, 40)], text="<image>\nWhat is shown?", return_tensors="pt")
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_id).sum()) == processor.image_seq_length == 16
    assert inputs["pixel_values"].shape == (1, 14, 3, TILE, TILE)
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}


def test_batched_images_of_different_sizes_feed_the_model(processor, model):
    prompts = [
        processor.apply_chat_template(chat("Is there a lesion?"), add_generation_prompt=True),
        processor.apply_chat_template(chat("Which organ is this, and is it enlarged?"), add_generation_prompt=True),
    ]
    inputs = processor(
        images=[image(300, 120, 1), image(64, 200, 2)], text=prompts, padding=True, padding_side="left",
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert len(processor.post_process_image_text_to_text(out)) == 2


def test_two_images_in_one_prompt(processor, model):
    inputs = processor(
        images=[[image(40, 40, 3), image(80, 40, 4)]], text="<image> and <image>: compare.", return_tensors="pt"
    )
    assert inputs["pixel_values"].shape[0] == 2
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_chat_template_places_images_and_generation_prompt(processor):
    text = processor.apply_chat_template(chat("Describe the scan."), add_generation_prompt=True)
    assert text == "<|im_start|>user\n<image>\nDescribe the scan.<|im_end|>\n<|im_start|>assistant\n"
    messages = chat("Describe the scan.")
    messages[0]["content"][0]["image"] = image(70, 50)
    tokenized = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert tokenized["input_ids"][0].count(processor.image_token_id) == processor.image_seq_length
    assert tuple(tokenized["pixel_values"].shape) == (1, 14, 3, TILE, TILE)


def test_trl_collator_with_assistant_only_loss_labels_exactly_the_assistant_turns(processor, tokenizer):
    conversation = chat("Is the heart enlarged?", "No, the cardiac silhouette is normal.") + [
        {"role": "user", "content": [{"type": "text", "text": "Anything else?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A small left pleural effusion."}]},
    ]
    examples = [
        {"images": [image(60, 60, 5)], "messages": conversation},
        {"images": [image(90, 30, 6)], "messages": chat("Modality?", "CT.")},
    ]
    collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    batch = collator(examples)
    assert batch["pixel_values"].shape == (2, 14, 3, TILE, TILE)
    trained = [tokenizer.decode(ids[labels != -100]) for ids, labels in zip(batch["input_ids"], batch["labels"])]
    assert trained[0] == "No, the cardiac silhouette is normal.<|im_end|>A small left pleural effusion.<|im_end|>"
    assert trained[1] == "CT.<|im_end|>"


def test_num_multimodal_tokens(processor):
    data = processor._get_num_multimodal_tokens(image_sizes=[(100, 200), (512, 64)])
    assert data.num_image_tokens == [16, 16]
    assert data.num_image_patches == [14, 14]


def test_more_or_fewer_images_than_placeholders_is_refused(processor):
    with pytest.raises(ValueError, match="1 <image> tokens and 2 images"):
        processor(images=[image(32, 32), image(32, 32)], text="<image> what?")
    with pytest.raises(ValueError, match="2 <image> tokens in the text but no images"):
        processor(text="<image> <image> what?")


def test_truncation_through_image_tokens_is_refused(processor):
    with pytest.raises(ValueError, match="truncation would cut through image tokens: 1 image.*16 image tokens but only"):
        processor(images=[image(32, 32)], text="Look: <image>", truncation=True, max_length=10)


def test_saving_after_a_truncated_call_does_not_bake_truncation_into_the_tokenizer(processor, tmp_path):
    with pytest.raises(ValueError):
        processor(images=[image(32, 32)], text="Look: <image>", truncation=True, max_length=10)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    inputs = reloaded(images=[image(32, 32)], text="Look: <image> " + "word " * 50)
    assert len(inputs["input_ids"][0]) > 60


def test_tokenizer_without_image_token_is_refused(smollm2_tokenizer_dir):
    plain = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    with pytest.raises(ValueError, match="does not know the image token '<scan>'"):
        LlavaMedHiResProcessor(LlavaMedHiResImageProcessor(scales=SCALES), plain, image_token="<scan>", image_seq_length=16)


def test_saved_processor_and_model_load_as_remote_code_without_the_package(processor, model, tmp_path):
    folder = tmp_path / "export"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert (folder / "processing_llava_med_hires.py").exists()
    assert (folder / "image_processing_llava_med_hires.py").exists()
    assert (folder / "chat_template.jinja").exists()

    reloaded = AutoProcessor.from_pretrained(folder)  # in-process, through the registered classes
    assert isinstance(reloaded, LlavaMedHiResProcessor) and reloaded.image_processor.scales == SCALES

    picture = image(120, 70, 7)
    picture.save(tmp_path / "picture.png")
    prompt = processor.apply_chat_template(chat("What is this?"), add_generation_prompt=True)
    local = processor(images=[picture], text=prompt, return_tensors="pt")
    with torch.no_grad():
        local_logits = model(**local).logits
    run_without_hf_medvlm(
        f"""
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is this?"}}]}}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[Image.open("picture.png")], text=prompt, return_tensors="pt")
        np.save("ids.npy", inputs["input_ids"].numpy())
        np.save("pixels.npy", inputs["pixel_values"].numpy())
        with torch.no_grad():
            np.save("logits.npy", model(**inputs).logits.numpy())
        """,
        cwd=tmp_path,
    )
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "ids.npy")), local["input_ids"])
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "pixels.npy")), local["pixel_values"])
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "logits.npy")), local_logits)
