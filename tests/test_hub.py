"""Publishing and serving: the exported folder, the four user doors by repo id where hf_medvlm is not installed,
the model card's metadata, push safeguards, checkpoint conversion from the original layouts, and `ask`."""

import argparse
import ast
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import EvalResult, ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from hf_medvlm import (
    LlavaMedHiResConfig,
    LlavaMedHiResForConditionalGeneration,
    LlavaMedHiResImageProcessor,
    LlavaMedHiResProcessor,
)
from hf_medvlm.hub import add_hub_commands, ask, convert_checkpoint, export_model, push_to_hub
from hf_medvlm.hub.chat_formats import chat_template
from hf_medvlm.hub.push import commit_operations

from conftest import TILE, TINY_CLIP, TINY_LLAMA, run_without_hf_medvlm
from test_remote_code import check_imports

SCALES = [TILE, 2 * TILE]
REPO_ID = "medvlm-tests/tiny-hires"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the cache layout wants a 40-hex commit for the snapshot
QUESTION = "What is shown?"
NEW_TOKENS = 5
EVAL_RESULTS = [
    {"dataset_type": "flaviagiammarino/vqa-rad", "dataset_name": "VQA-RAD", "dataset_split": "test",
     "metric_type": "accuracy", "metric_name": "closed accuracy", "metric_value": 62.87},
    EvalResult(task_type="visual-question-answering", dataset_type="BoKelvin/SLAKE", dataset_name="SLAKE",
               dataset_split="test", metric_type="recall", metric_name="open recall", metric_value=44.34),
]


# ---------------------------------------------------------------- fixtures: a tiny trained model, exported, in a cache


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def user_turn(question=QUESTION, image=None):
    item = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [{"role": "user", "content": [item, {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """`(folder, model, processor)`: a 2-scale model with the real SmolLM2 tokenizer, saved as training would."""
    text = dict(TINY_LLAMA, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = LlavaMedHiResConfig(vision_config=TINY_CLIP, text_config=text, scales=SCALES,
                                 image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaMedHiResForConditionalGeneration(config).eval()
    processor = LlavaMedHiResProcessor(LlavaMedHiResImageProcessor(scales=SCALES), tokenizer,
                                       image_seq_length=config.image_seq_length)
    folder = tmp_path_factory.mktemp("trained")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-hires"
    return export_model(
        trained[0], out, EVAL_RESULTS, base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        datasets=["flaviagiammarino/vqa-rad", "BoKelvin/SLAKE"], tags=["radiology"], max_shard_size="10MB",
    )


def lay_out_in_cache(hub_cache: Path, repo_id: str, folder: Path) -> Path:
    """Place `folder` where huggingface_hub keeps a downloaded repo: models--org--name/snapshots/<commit>, refs/main."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def hf_home(exported, tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    lay_out_in_cache(home / "hub", REPO_ID, exported)
    return home


@pytest.fixture
def cache_env(hf_home, monkeypatch):
    """Child processes read the test's cache, offline (the in-process huggingface_hub keeps its import-time paths)."""
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_home


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    path = tmp_path_factory.mktemp("picture") / "picture.png"
    image.save(path)
    return path


def png_base64(path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


@pytest.fixture(scope="module")
def reference(trained, picture):
    """The greedy answers of the in-process model: to a chat turn and to a plain `<image>` prompt."""
    _, model, processor = trained
    image = Image.open(picture).convert("RGB")
    chat = processor.apply_chat_template(user_turn(image=image), add_generation_prompt=True, tokenize=True,
                                         return_dict=True, return_tensors="pt")
    plain = processor(images=[image], text=f"<image>\n{QUESTION}", return_tensors="pt")
    answers = {}
    for name, inputs in (("chat", chat), ("plain", plain)):
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        answers[name] = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answers["chat"].strip(), "the oracle answer must not be empty"
    return answers


# ---------------------------------------------------------------- the exported folder and its model card


def test_export_holds_what_a_hub_repo_needs(exported):
    names = {p.name for p in exported.iterdir()}
    index = json.loads((exported / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and shards <= names  # max_shard_size="10MB" on ~26 MB of weights
    config = json.loads((exported / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    processor_config = json.loads((exported / "processor_config.json").read_text())
    code = {ref.split(".")[0] + ".py" for ref in config["auto_map"].values()}
    code.add(processor_config["auto_map"]["AutoProcessor"].split(".")[0] + ".py")
    assert code <= names
    assert {"chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "README.md", "handler.py", "requirements.txt", "example.png"} <= names
    assert [p for f in exported.glob("*.py") if f.name != "handler.py" for p in check_imports(f)] == []
    handler_imports = {name.split(".")[0] for node in ast.walk(ast.parse((exported / "handler.py").read_text()))
                       for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                                    [node.module] if isinstance(node, ast.ImportFrom) else [])}
    assert handler_imports - set(sys.stdlib_module_names) == {"torch", "transformers", "PIL"}
    assert Image.open(exported / "example.png").size[0] <= 256


def test_model_card_metadata_parses_and_carries_the_eval_results(exported):
    card = ModelCard.load(exported / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-text-to-text"
    assert data.license == "apache-2.0"
    assert data.base_model == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert data.datasets == ["flaviagiammarino/vqa-rad", "BoKelvin/SLAKE"]
    assert {"medical", "radiology", "llava"} <= set(data.tags)
    widget = data.widget[0]
    assert widget["src"].endswith("example.png") and widget["text"]
    found = {(r.dataset_type, r.metric_name): r.metric_value for r in data.eval_results}
    assert found == {("flaviagiammarino/vqa-rad", "closed accuracy"): 62.87, ("BoKelvin/SLAKE", "open recall"): 44.34}
    assert data.to_dict()["model-index"][0]["name"] == data.model_name
    assert "| VQA-RAD | test | closed accuracy | 62.87 |" in card.text
    assert "scales" in card.text and "32 / 64 px" in card.text


def test_export_refuses_what_would_give_a_broken_repo(trained, exported, tmp_path):
    with pytest.raises(FileExistsError, match="not empty"):  # stale shards would be uploaded beside the new ones
        export_model(trained[0], exported)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no processor"):
        export_model(tmp_path / "model", tmp_path / "out")
    with pytest.raises(ValueError, match="must differ"):
        export_model(trained[0], trained[0])


# ---------------------------------------------------------------- the four doors, by repo id, without hf_medvlm


def test_auto_classes_load_by_repo_id_from_the_cache(cache_env, trained, picture, tmp_path):
    _, model, processor = trained
    image = Image.open(picture).convert("RGB")
    inputs = processor.apply_chat_template(user_turn(image=image), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        local = model(**inputs).logits
    run_without_hf_medvlm(
        f"""
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({REPO_ID!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({REPO_ID!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        image = Image.open({str(picture)!r}).convert("RGB")
        chat = [{{"role": "user", "content": [{{"type": "image", "image": image}},
                                              {{"type": "text", "text": {QUESTION!r}}}]}}]
        inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        with torch.no_grad():
            np.save("logits.npy", model(**inputs).logits.numpy())
        """,
        cwd=tmp_path,
    )
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "logits.npy")), local)


def test_pipeline_by_repo_id_answers_chat_and_plain_prompts(cache_env, reference, picture, tmp_path):
    result = run_without_hf_medvlm(
        f"""
        import json
        from PIL import Image
        from transformers import pipeline
        pipe = pipeline("image-text-to-text", model={REPO_ID!r}, trust_remote_code=True)
        image = Image.open({str(picture)!r}).convert("RGB")
        chat = [{{"role": "user", "content": [{{"type": "image", "image": image}},
                                              {{"type": "text", "text": {QUESTION!r}}}]}}]
        by_chat = pipe(text=chat, max_new_tokens={NEW_TOKENS}, return_full_text=False)[0]["generated_text"]
        by_text = pipe(images=image, text="<image>\\n{QUESTION}", max_new_tokens={NEW_TOKENS},
                       return_full_text=False)[0]["generated_text"]
        print("ANSWERS", json.dumps({{"chat": by_chat, "plain": by_text}}))
        """,
        cwd=tmp_path,
    )
    answers = json.loads(result.stdout.split("ANSWERS", 1)[1])
    assert answers == reference
    assert "not supported" not in (result.stdout + result.stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post_json(url: str, body: dict, timeout: float) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def test_transformers_serve_answers_chat_completions_with_a_data_uri_image(cache_env, reference, picture, tmp_path):
    # sitecustomize runs in every interpreter on PYTHONPATH, the `transformers` console script included
    blocker = tmp_path / "no_hf_medvlm"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent(
        """
        import importlib.abc, sys
        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "hf_medvlm" or name.startswith("hf_medvlm."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, _Block())
        """
    ))
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(blocker))
    command = [str(Path(sys.executable).with_name("transformers")), "serve", "--trust-remote-code",
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up:\n" + log.read_text()[-3000:]
                time.sleep(0.5)
        body = {
            "model": REPO_ID,
            "max_tokens": NEW_TOKENS,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_base64(picture)}},
                {"type": "text", "text": QUESTION},
            ]}],
        }
        status, reply = _post_json(f"http://127.0.0.1:{port}/v1/chat/completions", body, timeout=120)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert status == 200, f"{status} {reply}\n" + log.read_text()[-3000:]  # read once the server has flushed its log
    assert reply["choices"][0]["message"]["content"] == reference["chat"]


def test_endpoint_handler_from_the_repo_answers_without_the_package(cache_env, reference, picture, tmp_path):
    result = run_without_hf_medvlm(
        f"""
        import importlib.util, json, sys
        from huggingface_hub import snapshot_download
        folder = snapshot_download({REPO_ID!r})  # what Inference Endpoints do before building the handler
        spec = importlib.util.spec_from_file_location("handler", folder + "/handler.py")
        handler_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(handler_module)
        handler = handler_module.EndpointHandler(path=folder)
        by_fields = handler({{"inputs": {{"image": {png_base64(picture)!r}, "text": {QUESTION!r}}},
                              "parameters": {{"max_new_tokens": {NEW_TOKENS}}}}})
        by_chat = handler({{"inputs": [{{"role": "user", "content": [
            {{"type": "image", "url": "data:image/png;base64,{png_base64(picture)}"}},
            {{"type": "text", "text": {QUESTION!r}}}]}}], "parameters": {{"max_new_tokens": {NEW_TOKENS}}}}})
        refused = []
        for bad in ({{"inputs": {{"image": {str(picture)!r}, "text": "q"}}}},  # a path on the endpoint's disk
                    {{"inputs": [{{"role": "user", "content": [{{"type": "image", "url": {str(picture)!r}}}]}}]}},
                    {{"inputs": {{"image": {png_base64(picture)!r}, "text": ""}}}},
                    {{"inputs": {{"image": {png_base64(picture)!r}, "text": "q"}}, "parameters": {{"stream": True}}}}):
            try:
                handler(bad)
            except ValueError as error:
                refused.append(str(error))
        print("RESULT", json.dumps({{"fields": by_fields, "chat": by_chat, "refused": refused}}))
        """,
        cwd=tmp_path,
    )
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    assert out["fields"] == [{"generated_text": reference["chat"]}]
    assert out["chat"] == [{"generated_text": reference["chat"]}]
    assert len(out["refused"]) == 4 and "unsupported parameters ['stream']" in out["refused"][3]


# ---------------------------------------------------------------- push: what can be checked offline


def test_push_refuses_bad_arguments_before_any_network_call(exported, tmp_path):
    with pytest.raises(ValueError, match="invalid repo id"):
        push_to_hub(exported, "org/bad--name")
    with pytest.raises(ValueError, match="<namespace>/<name>"):
        push_to_hub(exported, "no-namespace")
    with pytest.raises(FileNotFoundError):
        push_to_hub(tmp_path / "missing", REPO_ID)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not an export"):
        push_to_hub(tmp_path, REPO_ID)


def test_push_never_writes_or_reveals_the_token(exported, monkeypatch):
    token = "hf_" + "T0kenThatMustNotLeak" * 2
    monkeypatch.setenv("HF_TOKEN", token)
    before = {p: p.stat().st_mtime_ns for p in exported.rglob("*")}
    with pytest.raises(Exception) as raised:  # offline: the first Hub call fails
        push_to_hub(exported, REPO_ID, private=True, revision="v1")
    assert token not in str(raised.value) and token not in repr(raised.value)
    assert {p: p.stat().st_mtime_ns for p in exported.rglob("*")} == before
    assert not any(token.encode() in p.read_bytes() for p in exported.rglob("*") if p.is_file())

    operations = {op.path_in_repo: op for op in commit_operations(exported, REPO_ID)}
    assert set(operations) == {p.name for p in exported.iterdir()}
    readme = operations["README.md"].path_or_fileobj
    readme = readme.getvalue() if hasattr(readme, "getvalue") else readme
    card = ModelCard(readme.decode())
    assert card.data.widget[0]["src"] == f"https://huggingface.co/{REPO_ID}/resolve/main/example.png"
    assert f'from_pretrained("{REPO_ID}"' in card.text and "<org>" not in card.text


# ---------------------------------------------------------------- conversion from the original layouts

# Each original layout, written from the documented key names (BRIEF §6; microsoft/LLaVA-Med, LLaVA-Rad,
# TinyLLaVA_Factory, transformers' convert_llava_weights_to_hf.py), as (our prefix, original prefix).
LLAVA_KEYS = [  # LlavaLlamaForCausalLM / LlavaMistralForCausalLM; the vision tower is stored apart
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.language_model.", "model."),
    ("lm_head.", "lm_head."),
]
TINYLLAVA_KEYS = [  # TinyLlavaForConditionalGeneration (Llama3-Med)
    ("model.multi_modal_projector.linear_1.", "connector._connector.0."),
    ("model.multi_modal_projector.linear_2.", "connector._connector.2."),
    ("model.vision_tower.", "vision_tower._vision_tower.vision_model."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
]


def original_layout(state_dict: dict, keys, vocab: int) -> dict:
    """Our tensors under the original names; the LM keeps its own vocabulary (the originals had no image token)."""
    out = {}
    for name, tensor in state_dict.items():
        for ours, theirs in keys:
            if name.startswith(ours):
                if name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
                    tensor = tensor[:vocab]
                out[theirs + name[len(ours):]] = tensor.clone().contiguous()
                break
    return out


@pytest.fixture(scope="module")
def plain_tokenizer_dir(tmp_path_factory):
    """SmolLM2's tokenizer as the LLM ships it, without `<image>`: the originals splice images in at a sentinel id."""
    from hf_medvlm.assembly import embedded_llm_path

    gguf = embedded_llm_path()
    folder = tmp_path_factory.mktemp("plain_tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    return folder


def reference_model(vocab: int, vision: dict, scales, text_type="llama") -> LlavaMedHiResForConditionalGeneration:
    """Our model with one extra vocabulary row (id `vocab`) for the image token the conversion adds."""
    text = dict(TINY_LLAMA, model_type=text_type, vocab_size=vocab + 1, pad_token_id=0)
    config = LlavaMedHiResConfig(vision_config=vision, text_config=text, image_token_id=vocab, scales=list(scales))
    torch.manual_seed(1)
    return LlavaMedHiResForConditionalGeneration(config).eval()


def llava_config(model, vocab, **fields) -> dict:
    """A LLaVA config.json: the LLM's own fields at the top level, plus the `mm_*` fields of the multimodal part."""
    text = {k: v for k, v in model.config.text_config.to_dict().items() if k != "model_type"}
    multimodal = {
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": "pad",
    }
    return {**text, "vocab_size": vocab, **multimodal, **fields}


def write_source(folder: Path, config: dict, tensors: dict, tokenizer_dir: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, folder / "model.safetensors")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


def llava_med_source(root: Path, tokenizer_dir: Path, vocab: int):
    """LLaVA-Med v1.5 (Mistral): LLM + projector; the config names an HF CLIP that lives in the Hub cache."""
    model = reference_model(vocab, TINY_CLIP, [TILE], text_type="mistral")
    config = llava_config(model, vocab, model_type="llava_mistral", architectures=["LlavaMistralForCausalLM"],
                          mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=TINY_CLIP["hidden_size"])
    tensors = original_layout(model.state_dict(), LLAVA_KEYS, vocab)
    src = write_source(root / "llava-med", config, tensors, tokenizer_dir)
    clip = CLIPModel(CLIPConfig(
        vision_config={k: v for k, v in TINY_CLIP.items() if k != "model_type"},
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        projection_dim=TINY_CLIP["projection_dim"],
    ))
    clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    tower = root / "clip-tower"
    clip.save_pretrained(tower)
    CLIPImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4]).save_pretrained(tower)
    lay_out_in_cache(root / "hub", "openai/clip-vit-large-patch14-336", tower)
    return model, src, None


def llava_rad_source(root: Path, tokenizer_dir: Path, vocab: int):
    """LLaVA-Rad: LLaVA layout (Vicuna), BiomedCLIP-CXR as an open_clip checkpoint with a timm trunk beside it."""
    timm_tower = {"model_type": "timm_wrapper", "architecture": "vit_tiny_patch16_224",
                  "model_args": {"img_size": TILE}, "do_pooling": False}
    model = reference_model(vocab, timm_tower, [TILE])
    config = llava_config(model, vocab, model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"],
                          mm_vision_tower="biomedclip_cxr_518", mm_vision_tower_config="biomedclipcxr_518.json",
                          mm_vision_tower_checkpoint="biomedclipcxr_518_checkpoint.pt", mm_hidden_size=192)
    tensors = original_layout(model.state_dict(), LLAVA_KEYS, vocab)
    src = write_source(root / "llava-rad", config, tensors, tokenizer_dir)
    open_clip = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": TILE},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"},
    }
    (src / "biomedclipcxr_518.json").write_text(json.dumps(open_clip))
    trunk = "model.vision_tower.timm_model."
    state = {
        "module.visual.trunk." + k[len(trunk):]: v.clone() for k, v in model.state_dict().items() if k.startswith(trunk)
    }
    state["module.visual.head.proj.weight"] = torch.randn(16, 192)
    state["module.text.transformer.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["module.logit_scale"] = torch.tensor(4.6)
    torch.save({"epoch": 10, "state_dict": state}, src / "biomedclipcxr_518_checkpoint.pt")
    return model, src, None


def llama3_med_source(root: Path, tokenizer_dir: Path, vocab: int):
    """Llama3-Med / TinyLLaVA: one checkpoint with the tower inside, S2 over three scales (projector 3x wider)."""
    model = reference_model(vocab, TINY_CLIP, [TILE, 2 * TILE, 3 * TILE])
    text = model.config.text_config.to_dict()
    config = {
        "model_type": "tinyllava", "architectures": ["TinyLlavaForConditionalGeneration"],
        "llm_model_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct", "connector_type": "mlp2x_gelu",
        "vision_model_name_or_path": "apple/DFN5B-CLIP-ViT-H-14-378", "text_config": {**text, "vocab_size": vocab},
        "vision_config": dict(TINY_CLIP), "vision_feature_layer": -2, "vision_feature_select_strategy": "patch",
        "image_aspect_ratio": "pad", "tokenizer_padding_side": "right",
    }
    tensors = original_layout(model.state_dict(), TINYLLAVA_KEYS, vocab)
    return model, write_source(root / "llama3-med", config, tensors, tokenizer_dir), None


LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def llava_hf_source(root: Path, image_tokenizer_dir: Path, vocab: int):
    """llava-hf: transformers' own LlavaForConditionalGeneration and LlavaProcessor, saved by transformers."""
    tokenizer = AutoTokenizer.from_pretrained(image_tokenizer_dir)
    config = LlavaConfig(vision_config=TINY_CLIP, text_config=dict(TINY_LLAMA, vocab_size=len(tokenizer)),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(2)
    llava = LlavaForConditionalGeneration(config).eval()
    src = root / "llava-hf"
    llava.save_pretrained(src)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": TILE}, crop_size=TILE, image_mean=[0.5] * 3,
                                           image_std=[0.25] * 3),
        tokenizer=tokenizer, patch_size=TINY_CLIP["patch_size"], vision_feature_select_strategy="default",
        chat_template=LLAVA_15_TEMPLATE,
    )
    processor.save_pretrained(src)
    return llava, src, None


SOURCES = {"llava-med": llava_med_source, "llava-rad": llava_rad_source, "llama3-med": llama3_med_source,
           "llava-hf": llava_hf_source}
EXPECTED = {  # scales, chat template, image mean carried over
    "llava-med": ([TILE], chat_template("mistral_instruct"), [0.4, 0.5, 0.6]),
    "llava-rad": ([TILE], chat_template("vicuna_v1"), None),
    "llama3-med": ([TILE, 2 * TILE, 3 * TILE], chat_template("chatml"), None),  # SmolLM2's vocabulary is ChatML's
    "llava-hf": ([TILE], LLAVA_15_TEMPLATE, [0.5, 0.5, 0.5]),
}


def convert_in_subprocess(source_format, src, out, hub_cache):
    """Convert where huggingface_hub reads `hub_cache` (its paths are fixed when it is first imported)."""
    env = dict(os.environ, HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    code = "import sys\nfrom hf_medvlm.hub import convert_checkpoint\nconvert_checkpoint(*sys.argv[1:])"
    command = [sys.executable, "-c", code, source_format, str(src), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.parametrize("source_format", list(SOURCES))
def test_conversion_gives_the_same_logits_as_the_original_weights(
    source_format, tmp_path, plain_tokenizer_dir, smollm2_tokenizer_dir
):
    vocab = len(AutoTokenizer.from_pretrained(plain_tokenizer_dir))
    if source_format == "llava-hf":
        original, src, _ = llava_hf_source(tmp_path, smollm2_tokenizer_dir, vocab)
        image_token_id = original.config.image_token_index
    else:
        original, src, _ = SOURCES[source_format](tmp_path, plain_tokenizer_dir, vocab)
        image_token_id = vocab
        assert "<image>" not in AutoTokenizer.from_pretrained(src).get_vocab()
    out = tmp_path / "converted"
    if source_format == "llava-med":  # the tower is found by the repo id its config names, in the Hub cache
        convert_in_subprocess(source_format, src, out, tmp_path / "hub")
    else:
        convert_checkpoint(source_format, src, out)

    converted = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    scales, template, mean = EXPECTED[source_format]
    assert converted.config.scales == scales and processor.image_processor.scales == scales
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == image_token_id == converted.config.image_token_id
    assert processor.chat_template == template
    if mean is not None:
        assert processor.image_processor.image_mean == pytest.approx(mean)

    seq = converted.config.image_seq_length
    ids = torch.tensor([[1] + [image_token_id] * seq + [5, 900, 77, 3000, 12]])
    pixels = torch.randn(1, converted.config.num_tiles, 3, TILE, TILE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = original(input_ids=ids, pixel_values=pixels if source_format != "llava-hf" else pixels[:, 0]).logits
        got = converted(input_ids=ids, pixel_values=pixels).logits
    # the image token's own row is new (the originals had none); every original vocabulary entry must agree
    shared = vocab if source_format != "llava-hf" else expected.shape[-1]
    assert got.shape == expected.shape
    assert torch.allclose(got[..., :shared], expected[..., :shared], atol=1e-5, rtol=0)


def test_conversion_lists_the_missing_tensors(tmp_path, plain_tokenizer_dir):
    vocab = len(AutoTokenizer.from_pretrained(plain_tokenizer_dir))
    _, src, _ = llava_rad_source(tmp_path, plain_tokenizer_dir, vocab)
    tensors = load_file(src / "model.safetensors")
    del tensors["model.mm_projector.2.weight"], tensors["model.mm_projector.2.bias"]
    save_file(tensors, src / "model.safetensors")
    checkpoint = torch.load(src / "biomedclipcxr_518_checkpoint.pt", weights_only=True)
    del checkpoint["state_dict"]["module.visual.trunk.blocks.3.mlp.fc1.weight"]
    torch.save(checkpoint, src / "biomedclipcxr_518_checkpoint.pt")
    with pytest.raises(ValueError) as raised:
        convert_checkpoint("llava-rad", src, tmp_path / "out")
    message = str(raised.value)
    assert "lacks 2 tensors: model.mm_projector.2.bias, model.mm_projector.2.weight" in message
    assert "biomedclipcxr_518_checkpoint.pt lacks 1 tensor: blocks.3.mlp.fc1.weight" in message
    assert not (tmp_path / "out").exists()


def test_conversion_refuses_other_projectors_and_formats(tmp_path):
    with pytest.raises(ValueError, match="unknown source format"):
        convert_checkpoint("llava-next", tmp_path, tmp_path / "out")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_llama", "mm_projector_type": "linear"}))
    with pytest.raises(ValueError, match="only the two-layer GELU MLP"):
        convert_checkpoint("llava-med", tmp_path, tmp_path / "out")


# ---------------------------------------------------------------- ask, and the commands


def test_ask_streams_the_greedy_answer(trained, picture, reference):
    folder, _, _ = trained
    written = io.StringIO()
    answer = ask(folder, picture, QUESTION, max_new_tokens=NEW_TOKENS, out=written)
    assert answer == reference["chat"]
    assert written.getvalue() == answer + "\n"


def test_ask_reads_dicom_through_load_medical_image(trained, tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    from hf_medvlm import load_medical_image

    folder, model, processor = trained
    ct = pydicom_data.get_testdata_file("CT_small.dcm")
    loaded = {"model": model, "processor": processor, "max_new_tokens": NEW_TOKENS, "echo": False}
    answer = ask(folder, ct, QUESTION, window="lung", **loaded)
    load_medical_image(ct, window="lung").save(tmp_path / "ct.png")
    assert answer == ask(folder, tmp_path / "ct.png", QUESTION, **loaded)


def test_hub_commands_parse_and_run(exported, picture, reference, capsys):
    parser = argparse.ArgumentParser(prog="hf-medvlm")
    add_hub_commands(parser.add_subparsers(dest="command", required=True))
    command = ["ask", "--model", str(exported), str(picture), QUESTION, f"--max-new-tokens={NEW_TOKENS}"]
    args = parser.parse_args(command)
    args.func(args)
    assert capsys.readouterr().out == reference["chat"] + "\n"
    args = parser.parse_args(["convert-checkpoint", "--from", "llava-rad", "src", "--out", "o", "--scales", "32", "64"])
    assert (args.source_format, args.src, args.scales, args.vision_tower) == ("llava-rad", "src", [32, 64], None)
    args = parser.parse_args(["push", "--model", "m", "--repo-id", "a/b", "--private", "--revision", "r"])
    assert (args.private, args.revision) == (True, "r")
    args = parser.parse_args(["export", "--model", "m", "--out", "o", "--base-model", "x/y", "--dataset", "d/e"])
    assert args.base_model == ["x/y"] and args.max_shard_size == "5GB"
    with pytest.raises(SystemExit):
        parser.parse_args(["convert-checkpoint", "--from", "llava-next", "src", "--out", "o"])
