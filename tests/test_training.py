"""Training through TRL's SFTTrainer: stage policies, the two-stage curriculum, LoRA, resume, DDP, recipes.

Every run here is a real `SFTTrainer` run on a tiny model: a random 3-layer CLIP tower and a random 2-layer Llama
that uses the real SmolLM2 tokenizer, so chat templates, assistant masks and image tokens are the production ones.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from hf_medvlm import training

from conftest import TINY_CLIP, TINY_LLAMA, tiny_model

REPO = Path(__file__).resolve().parents[1]
SCALES = [32, 64]


# ---------------------------------------------------------------------------------------------------------------------
# fixtures: a tiny LLM folder, a base model assembled from it, synthetic data, and the curriculum run once


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory, smollm2_tokenizer_dir):
    """A random 2-layer Llama with the SmolLM2 tokenizer, saved as a plain transformers folder."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    fields = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    fields.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_llm")
    LlamaForCausalLM(LlamaConfig(**fields)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return training.make_tiny_dataset(tmp_path_factory.mktemp("data"), num_images=8, image_size=48)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, llm_dir):
    torch.manual_seed(0)
    return training.build(tmp_path_factory.mktemp("base"), vision=TINY_CLIP, text=str(llm_dir), scales=SCALES)


def recipe(output_dir, **overrides) -> dict:
    return {
        "output_dir": str(output_dir), "per_device_train_batch_size": 4, "num_train_epochs": 1,
        "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "max_length": 512,
        "seed": 0, "disable_tqdm": True, **overrides,
    }


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, base_dir, data):
    out = tmp_path_factory.mktemp("stage1")
    return training.train(recipe(out, stage="alignment", model_name_or_path=str(base_dir),
                                 dataset_path=str(data["captions"])))


@pytest.fixture(scope="module")
def stage2(tmp_path_factory, stage1, data):
    out = tmp_path_factory.mktemp("stage2")
    return training.train(recipe(out, stage="instruction", model_name_or_path=str(stage1.output_dir),
                                 dataset_path=str(data["conversations"]), assistant_only_loss=True))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, stage1, data):
    out = tmp_path_factory.mktemp("lora")
    return training.train(recipe(out, stage="lora", model_name_or_path=str(stage1.output_dir), lora_r=4,
                                 lora_alpha=8, lora_dropout=0.0, dataset_path=str(data["conversations"]),
                                 assistant_only_loss=True))


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def split(tensors: dict, prefix: str) -> dict:
    return {k: v for k, v in tensors.items() if k.startswith(prefix)}


def changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


# ---------------------------------------------------------------------------------------------------------------------
# assembly: chat templates derived from the LLM's own, timm towers

MISTRAL_V02_TEMPLATE = (  # Mistral-7B-Instruct-v0.2's template, as shipped in its tokenizer_config.json
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
CONVERSATION = [
    {"role": "user", "content": "Is this a CT?"}, {"role": "assistant", "content": "Yes, an axial CT."},
    {"role": "user", "content": "Any lesion?"}, {"role": "assistant", "content": "No."},
]


def trl_template(name):
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


@pytest.mark.parametrize("name", ["llama3", "llama3_1", "mistral_v02"])
def test_derived_chat_template_renders_like_the_llms_own_and_masks_only_the_answers(name, llm_dir):
    from hf_medvlm.assembly import derive_chat_template
    from hf_medvlm.processing import LlavaMedHiResImageProcessor, LlavaMedHiResProcessor

    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    tokenizer.chat_template = MISTRAL_V02_TEMPLATE if name == "mistral_v02" else trl_template(name)
    tokenizer.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)  # as Llama-3
    derived = derive_chat_template(tokenizer)
    assert "{%- generation -%}" in derived
    for messages, generation_prompt in [(CONVERSATION, False), (CONVERSATION[:3], True)]:
        own = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        assert tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=derived
        ) == own  # the LLM's own template is the oracle
    with_system = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    if name != "mistral_v02":  # Mistral v0.2 refuses system turns; the derived template folds them into the first
        assert tokenizer.apply_chat_template(with_system, tokenize=False, chat_template=derived) == \
            tokenizer.apply_chat_template(with_system, tokenize=False)

    processor = LlavaMedHiResProcessor(LlavaMedHiResImageProcessor(scales=SCALES), tokenizer, chat_template=derived,
                                       image_seq_length=16)
    batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)([
        {"images": [Image.new("RGB", (40, 30))], "messages": CONVERSATION}  # TRL puts the image in the first turn
    ])
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 16
    trained = tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    end = {"llama3": "<|eot_id|>", "llama3_1": "<|eot_id|>", "mistral_v02": tokenizer.eos_token}[name]
    assert trained == f"Yes, an axial CT.{end}No.{end}"


def test_chatml_llms_keep_the_default_template(llm_dir):
    from hf_medvlm import DEFAULT_CHAT_TEMPLATE
    from hf_medvlm.assembly import derive_chat_template

    assert derive_chat_template(AutoTokenizer.from_pretrained(llm_dir)) == DEFAULT_CHAT_TEMPLATE  # SmolLM2: ChatML


def test_a_timm_folder_is_a_vision_tower(tmp_path, llm_dir):
    import timm
    from timm.models import _hub

    from hf_medvlm.assembly import build_model

    shape = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    tower = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **shape)
    _hub.save_for_hf(tower, tmp_path / "timm", model_args=shape)  # the layout of timm's Hub repos
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    config["model_args"] = shape
    config["pretrained_cfg"].update(mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    (tmp_path / "timm" / "config.json").write_text(json.dumps(config))

    model, processor = build_model(vision=str(tmp_path / "timm"), text=str(llm_dir), scales=SCALES)
    assert model.config.vision_config.model_type == "timm_wrapper"
    loaded = model.model.vision_tower.timm_model.state_dict()
    assert all(torch.equal(value, loaded[key]) for key, value in tower.state_dict().items())
    assert list(processor.image_processor.image_mean) == [0.1, 0.2, 0.3]
    assert list(processor.image_processor.image_std) == [0.4, 0.5, 0.6]


# ---------------------------------------------------------------------------------------------------------------------
# stage policies


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def under(model, *prefixes) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes)}


def test_stage_policies_set_exactly_the_trainable_modules():
    model = tiny_model()
    projector, vision = "model.multi_modal_projector.", "model.vision_tower."
    llm = ("model.language_model.", "lm_head.")

    record = training.apply_stage(model, "alignment")
    assert trainable(model) == under(model, projector)
    assert record == {"stage": "alignment", "train_vision_tower": False, "trainable": ["multi_modal_projector"],
                      "previous": []}

    training.apply_stage(model, "instruction")
    assert trainable(model) == under(model, projector, *llm)
    assert model.config.training_stage["previous"] == ["alignment"]

    training.apply_stage(model, "instruction", train_vision_tower=True)
    assert trainable(model) == under(model, projector, vision, *llm)

    record = training.apply_stage(model, "lora")
    assert trainable(model) == set()  # peft adds what trains
    from peft import get_peft_model

    peft_model = get_peft_model(model, training.lora_config(model, training.ModelArguments(lora_r=2), record))
    names = trainable(peft_model)
    lora = {n for n in names if "lora_" in n}
    assert lora and all(".language_model." in n for n in lora)  # never CLIP's q_proj/v_proj
    assert {n for n in names if n not in lora} == {
        n for n in names if "multi_modal_projector.modules_to_save" in n
    } != set()
    assert not any("vision_tower" in n for n in names)

    with pytest.raises(ValueError, match="unknown stage 'pretraining'; expected one of alignment, instruction, lora"):
        training.apply_stage(tiny_model(), "pretraining")


# ---------------------------------------------------------------------------------------------------------------------
# the curriculum


def test_alignment_changes_only_the_projector(base_dir, stage1):
    before, after = weights(base_dir), weights(stage1.output_dir)
    assert changed(before, after) == set(split(before, "model.multi_modal_projector."))
    config = json.loads((stage1.output_dir / "config.json").read_text())
    assert config["training_stage"]["stage"] == "alignment"
    # a Hub-ready folder: the model and processor code travel with the weights
    for name in ("modeling_llava_med_hires.py", "configuration_llava_med_hires.py", "processing_llava_med_hires.py",
                 "image_processing_llava_med_hires.py", "chat_template.jinja", "tokenizer.json"):
        assert (stage1.output_dir / name).is_file(), name


def test_instruction_from_alignment_output_trains_llm_and_projector_never_the_vision_tower(stage1, stage2):
    before, after = weights(stage1.output_dir), weights(stage2.output_dir)
    moved = changed(before, after)
    assert not moved & set(split(before, "model.vision_tower."))
    assert set(split(before, "model.multi_modal_projector.")) <= moved
    assert set(split(before, "model.language_model.")) | {"lm_head.weight"} <= moved
    record = json.loads((stage2.output_dir / "config.json").read_text())["training_stage"]
    assert record["stage"] == "instruction" and record["previous"] == ["alignment"]


def test_losses_are_on_the_caption_and_on_the_assistant_turns_only(base_dir, data):
    processor = AutoProcessor.from_pretrained(base_dir)
    tokenizer = processor.tokenizer
    captions = training.load_training_dataset(data["captions"])
    conversations = training.load_training_dataset(data["conversations"])
    assert captions.column_names == ["images", "prompt", "completion"]
    assert conversations.column_names == ["images", "messages"]

    def trained_text(examples, **flags):
        batch = DataCollatorForVisionLanguageModeling(processor, **flags)([dict(e) for e in examples])
        assert batch["pixel_values"].shape == (len(examples), 5, 3, 32, 32)
        return [tokenizer.decode(i[l != -100]) for i, l in zip(batch["input_ids"], batch["labels"])]

    assert trained_text([captions[0]], completion_only_loss=True) == [
        "A red circle on a dark background.<|im_end|>\n"
    ]
    assert trained_text([conversations[1]], assistant_only_loss=True) == ["A square.<|im_end|>It is red.<|im_end|>"]


def test_lora_adapter_reloads_with_peft_and_merged_logits_equal_unmerged(stage1, lora_run, tmp_path):
    from peft import PeftModel

    adapter = lora_run.output_dir
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    assert json.loads((adapter / training.TRAINING_STAGE_FILE).read_text())["stage"] == "lora"
    saved = load_file(adapter / "adapter_model.safetensors")
    assert any("multi_modal_projector" in k for k in saved)  # the projector travels with the adapter
    assert not any("vision_tower" in k for k in saved)

    processor = AutoProcessor.from_pretrained(adapter)
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which shape is shown?"}]}]
    inputs = processor(images=[image], text=processor.apply_chat_template(messages, add_generation_prompt=True),
                       return_tensors="pt")

    base = AutoModelForImageTextToText.from_pretrained(stage1.output_dir)
    unmerged = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        expected = unmerged(**inputs).logits
    merged_dir = training.merge(adapter, tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        got = merged(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert merged.config.training_stage["stage"] == "lora"
    # the adapter trained something, and the merged folder is a plain stage-2 input again
    plain = AutoModelForImageTextToText.from_pretrained(stage1.output_dir).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(**inputs).logits, got)
    assert not changed(split(weights(stage1.output_dir), "model.vision_tower."),
                       split(weights(merged_dir), "model.vision_tower."))


def test_loss_falls_clearly_on_a_small_overfit_set(tmp_path, llm_dir, data):
    # also the assembly path: the recipe names a vision config and an LLM folder instead of a saved model
    result = training.train(recipe(
        tmp_path / "overfit", stage="instruction", vision=TINY_CLIP, text=str(llm_dir), scales=SCALES,
        dataset_path=str(data["conversations"]), assistant_only_loss=True, max_train_samples=4, max_steps=12,
        learning_rate=1e-2, lr_scheduler_type="constant",
    ))
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.4 * losses[0], losses


def test_a_killed_run_resumes_to_the_same_final_weights(tmp_path, base_dir, data):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:  # after checkpoint-2 was written, before checkpoint-4
                raise KeyboardInterrupt("killed")

    settings = dict(stage="instruction", model_name_or_path=str(base_dir), dataset_path=str(data["conversations"]),
                    assistant_only_loss=True, per_device_train_batch_size=2, max_train_samples=6, max_steps=4,
                    save_strategy="steps", save_steps=2, lr_scheduler_type="cosine")  # 3 steps an epoch: crosses one
    straight = training.train(recipe(tmp_path / "straight", **settings))
    with pytest.raises(KeyboardInterrupt):
        training.train(recipe(tmp_path / "resumed", **settings), callbacks=[Kill()])
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = training.train(recipe(tmp_path / "resumed", resume_from_checkpoint="last", **settings))
    assert not changed(weights(straight.output_dir), weights(resumed.output_dir))


# ---------------------------------------------------------------------------------------------------------------------
# recipes


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dataset_path="no/such/file.jsonl"), r"dataset_path 'no/such/file.jsonl' does not exist"),
        (dict(stage="pretraining"), r"unknown stage 'pretraining'; expected one of alignment, instruction, lora"),
        (dict(model_name_or_path=None, vision=TINY_CLIP, scales=[32, 48]),
         r"scales \[32, 48\] do not fit the vision tower \(clip_vision_model\): scales \[48\] are not multiples"),
        (dict(model_name_or_path=None, vision=TINY_CLIP, scales=[64, 128]),
         r"scales \[64, 128\] do not fit .* must equal the vision tower's input size .* 32"),
        (dict(scales=[32, 96]), r"scales \[32, 96\] differ from the saved model's \[32, 64\]"),
        (dict(vision=TINY_CLIP), r"either model_name_or_path .* or vision \+ text"),
        (dict(learning_rat=1e-3), r"unknown recipe keys \['learning_rat'\]"),
        (dict(max_length=16), r"max_length 16 leaves no room for text after the 16 image tokens"),
        (dict(use_peft=True), r"use_peft is set with stage 'instruction'; LoRA runs say `stage: lora`"),
    ],
    ids=["missing-data", "unknown-stage", "scales-not-multiples", "scales-not-tower-size", "scales-changed",
         "two-model-sources", "unknown-key", "max-length", "peft-without-lora-stage"],
)
def test_bad_recipes_fail_before_anything_is_loaded(overrides, message, tmp_path, base_dir, data, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model or dataset was loaded before the recipe was validated")

    monkeypatch.setattr(training, "load_or_build", refuse)
    monkeypatch.setattr(training, "load_training_dataset", refuse)
    settings = dict(stage="instruction", model_name_or_path=str(base_dir), dataset_path=str(data["conversations"]))
    settings.update(overrides)
    with pytest.raises(ValueError, match=message):
        training.train(recipe(tmp_path / "out", **settings))
    assert not (tmp_path / "out").exists()


def test_a_lora_adapter_is_not_a_training_input(tmp_path, data, lora_run):
    with pytest.raises(ValueError, match="is a LoRA adapter; merge it first"):
        training.train(recipe(tmp_path / "out", stage="instruction", model_name_or_path=str(lora_run.output_dir),
                              dataset_path=str(data["conversations"])))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults apply only without CUDA")
def test_without_cuda_bf16_and_checkpointing_are_switched_off_in_one_log_line(caplog, tmp_path):
    with caplog.at_level("WARNING", logger="hf_medvlm.training"):
        _, args, _ = training.parse_recipe(recipe(tmp_path, bf16=True, gradient_checkpointing=True))
    assert (args.bf16, args.fp16, args.gradient_checkpointing, args.activation_checkpointing) == (False,) * 4
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_medvlm.training"]
    assert len(lines) == 1 and "no CUDA device" in lines[0]


def raw(path) -> dict:
    return yaml.safe_load((REPO / "recipes" / path).read_text())


@pytest.mark.parametrize("path", sorted(
    str(p.relative_to(REPO / "recipes")) for p in (REPO / "recipes").rglob("*.yaml") if p.parent.name != "accelerate"
))
def test_every_recipe_parses_into_sftconfig_and_model_arguments(path):
    data_args, args, model_args = training.parse_recipe(REPO / "recipes" / path)
    assert model_args.stage in training.STAGES
    assert data_args.dataset_path and args.output_dir.startswith("outputs/")
    assert args.max_length and args.weight_decay == 0.0 and args.lr_scheduler_type.value == "cosine"
    conversational = model_args.stage != "alignment"
    assert args.assistant_only_loss == conversational


GPUS = raw("accelerate/deepspeed_zero3.yaml")["num_processes"]


@pytest.mark.parametrize("path, global_batch, lr", [
    ("llama3_med/stage1_alignment.yaml", 256, 1e-3),
    ("llama3_med/stage2_instruction.yaml", 128, 2e-5),
    ("llava_med/stage1_alignment.yaml", 256, 1e-3),
    ("llava_med/stage2_instruction.yaml", 128, 2e-5),
])
def test_paper_recipes_follow_tables_8_and_9(path, global_batch, lr):
    config = raw(path)
    assert GPUS == 4  # the paper's 4x H100
    assert config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] * GPUS == global_batch
    assert (config["learning_rate"], config["num_train_epochs"], config["max_length"]) == (lr, 1, 2048)
    assert (config["weight_decay"], config["warmup_steps"], config["lr_scheduler_type"]) == (0.0, 0.03, "cosine")
    assert config["optim"] == "adamw_torch" and config["bf16"] is True
    if path.startswith("llama3_med/stage1"):
        assert config["vision"] == "timm/vit_huge_patch14_clip_378.dfn5b"
        assert config["text"] == "meta-llama/Meta-Llama-3-8B-Instruct" and config["scales"] == [378, 756, 1134]
    if path.startswith("llava_med/stage1"):
        assert config["vision"] == "openai/clip-vit-large-patch14-336"
        assert config["text"] == "mistralai/Mistral-7B-Instruct-v0.2" and config["scales"] == [336]


def test_accelerate_configs_name_the_intended_backends():
    assert raw("accelerate/ddp.yaml")["distributed_type"] == "MULTI_GPU"
    assert raw("accelerate/deepspeed_zero2.yaml")["deepspeed_config"]["zero_stage"] == 2
    assert raw("accelerate/deepspeed_zero3.yaml")["deepspeed_config"]["zero_stage"] == 3
    assert raw("accelerate/fsdp2.yaml")["fsdp_config"]["fsdp_version"] == 2


def test_cli_build_and_train_commands(tmp_path, llm_dir, data):
    parser = argparse.ArgumentParser()
    training.add_training_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["build", "--vision", json.dumps(TINY_CLIP), "--text", str(llm_dir), "--scales", "32",
                              "64", "--out", str(tmp_path / "built")])
    args.func(args)
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "built").config.scales == SCALES

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path / "run", stage="alignment", model_name_or_path=str(
        tmp_path / "built"), dataset_path=str(data["captions"]), max_steps=3)))
    args = parser.parse_args(["train", "--config", str(path), "--", "--max_steps", "1"])
    args.func(args)
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 1  # the command-line override beat the recipe's max_steps

    args = parser.parse_args(["merge", str(tmp_path / "run"), str(tmp_path / "merged")])
    with pytest.raises(ValueError, match="holds no LoRA adapter"):
        args.func(args)


# ---------------------------------------------------------------------------------------------------------------------
# several processes


def test_two_ddp_processes_match_one_process_at_the_same_global_batch(tmp_path, base_dir, data):
    # SGD keeps the weights linear in the gradients; Adam's first steps are ~lr * sign(grad), which turns
    # floating-point noise in near-zero gradients into lr-sized differences
    settings = dict(stage="instruction", model_name_or_path=str(base_dir), dataset_path=str(data["conversations"]),
                    assistant_only_loss=True, max_steps=2, optim="sgd", learning_rate=0.1)
    single = training.train(recipe(tmp_path / "single", per_device_train_batch_size=4, **settings))

    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path / "ddp", per_device_train_batch_size=2, **settings)))
    accelerate = Path(sys.executable).with_name("accelerate")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    # `--multi_gpu` starts the processes through torchrun; on a machine without GPUs they join a gloo group
    # (`--cpu` alone would start one process)
    result = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_medvlm.training", "--config", str(path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())
    assert state["epoch"] == 1.0  # 2 steps x 2 processes x 2 rows = all 8 rows: the processes shared the data
    one, two, start = weights(single.output_dir), weights(tmp_path / "ddp"), weights(base_dir)
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    moved = max((one[k] - start[k]).abs().max().item() for k in one)
    # the same rows in the same global batches; only the order of floating-point reductions differs
    assert worst < 1e-6 < 1e-3 < moved, (worst, moved)
