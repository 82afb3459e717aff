"""The saved folder is Hub remote code: it loads where hf_medvlm is not installed and imports nothing else of ours."""

import ast
import sys
from pathlib import Path

import numpy as np
import torch

import hf_medvlm

from conftest import TILE, TINY_TIMM, prompt_ids, run_without_hf_medvlm, tiny_model

PUBLISHED = [Path(hf_medvlm.__file__).parent / "modeling", Path(hf_medvlm.__file__).parent / "processing"]
ALLOWED_TOP_LEVEL = {"torch", "transformers"}
LAZY_ALLOWED = {"timm"}  # imported inside a function, only when the tower is a timm model


def module_level_imports(tree):
    for node in tree.body:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")


def all_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")


def check_imports(path: Path) -> list[str]:
    """Imports of `path` outside torch, transformers, the standard library and same-folder siblings."""
    tree = ast.parse(path.read_text())
    siblings = {p.stem for p in path.parent.glob("*.py")}
    problems = []
    for name in all_imports(tree):
        top = name.split(".")[0]
        if name.startswith("."):
            if name.startswith("..") or name[1:].split(".")[0] not in siblings:
                problems.append(f"{path.name}: relative import {name!r} leaves the folder")
        elif top in ALLOWED_TOP_LEVEL or top in sys.stdlib_module_names:
            continue
        elif top in LAZY_ALLOWED and name not in set(module_level_imports(tree)):
            continue
        else:
            problems.append(f"{path.name}: imports {name!r}")
    return problems


def test_published_files_import_only_torch_transformers_and_siblings():
    files = [f for folder in PUBLISHED for f in folder.glob("*.py")]
    assert any(f.name == "modeling_llava_med_hires.py" for f in files)
    assert [p for f in files for p in check_imports(f)] == []


def test_import_checker_catches_outside_imports(tmp_path):
    (tmp_path / "sibling.py").write_text("x = 1\n")
    (tmp_path / "bad.py").write_text("import numpy\nfrom hf_medvlm import x\nfrom ..up import y\nfrom .sibling import x\n")
    problems = check_imports(tmp_path / "bad.py")
    assert len(problems) == 3 and "numpy" in problems[0] and "hf_medvlm" in problems[1] and "..up" in problems[2]


def exported_folder_round_trip(model, tmp_path, pixels):
    folder = tmp_path / "exported"
    model.save_pretrained(folder)
    exported = sorted(p.name for p in folder.glob("*.py"))
    assert exported == ["configuration_llava_med_hires.py", "modeling_llava_med_hires.py"]
    assert [p for f in folder.glob("*.py") for p in check_imports(f)] == []

    ids = prompt_ids(pixels.shape[0], model.config.image_seq_length)
    np.save(tmp_path / "ids.npy", ids.numpy())
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    run_without_hf_medvlm(
        f"""
        import numpy as np, torch
        from transformers import AutoModelForImageTextToText
        try:
            import hf_medvlm
            raise SystemExit("hf_medvlm must not be importable here")
        except ModuleNotFoundError:
            pass
        model = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        ids = torch.from_numpy(np.load("ids.npy"))
        pixels = torch.from_numpy(np.load("pixels.npy"))
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=pixels).logits
        np.save("remote_logits.npy", logits.numpy())
        """,
        cwd=tmp_path,
    )
    with torch.no_grad():
        local = model(input_ids=ids, pixel_values=pixels).logits
    return local, torch.from_numpy(np.load(tmp_path / "remote_logits.npy"))


def test_remote_code_round_trip_without_the_package_gives_identical_logits(tmp_path):
    model = tiny_model((TILE, 2 * TILE, 3 * TILE))
    local, remote = exported_folder_round_trip(model, tmp_path, torch.randn(2, 14, 3, TILE, TILE))
    assert torch.equal(local, remote)


def test_remote_code_round_trip_with_a_timm_tower(tmp_path):
    model = tiny_model((TILE, 2 * TILE), vision=TINY_TIMM)
    local, remote = exported_folder_round_trip(model, tmp_path, torch.randn(1, 5, 3, TILE, TILE))
    assert torch.equal(local, remote)
