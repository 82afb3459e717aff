"""The command line: the tile picture and the quick start's end-to-end run."""

import json
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from hf_medvlm.cli import main
from hf_medvlm.visualize import PANEL


def test_tiles_draws_every_scales_grid(tmp_path):
    source = tmp_path / "scan.png"
    Image.fromarray(np.full((90, 120), 40, dtype=np.uint8)).save(source)
    out = tmp_path / "tiles.png"
    assert main(["tiles", str(source), "--out", str(out), "--scales", "32", "64", "96"]) == 0
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert picture.shape == (PANEL + 56, 3 * (PANEL + 16) + 16, 3)
    red = (picture[..., 0] > 200) & (picture[..., 1] < 100) & (picture[..., 2] < 100)
    middle_row = 40 + 60  # clear of every horizontal grid line
    for index, k in enumerate((1, 2, 3)):
        left = 16 + index * (PANEL + 16)
        interior = red[middle_row, left + 4 : left + PANEL - 4]
        # a grid of k x k tiles has k - 1 interior vertical lines, each a couple of pixels wide
        runs = np.flatnonzero(np.diff(interior.astype(int)) == 1)
        assert len(runs) == k - 1, (k, runs)


def test_tiles_reads_dicom(tmp_path):
    from pydicom.data import get_testdata_file

    out = tmp_path / "ct.png"
    assert main(["tiles", get_testdata_file("CT_small.dcm"), "--out", str(out), "--scales", "128", "256"]) == 0
    assert Image.open(out).size == (2 * (PANEL + 16) + 16, PANEL + 56)


def test_tiles_refuses_bad_scales(tmp_path, capsys):
    source = tmp_path / "scan.png"
    Image.new("L", (40, 40)).save(source)
    assert main(["tiles", str(source), "--out", str(tmp_path / "x.png"), "--scales", "32", "48"]) == 2
    assert "not multiples" in capsys.readouterr().err


def test_quickstart_runs_end_to_end_and_the_export_reloads_as_remote_code(tmp_path):
    command = [shutil.which("hf-medvlm") or sys.executable, "quickstart", "--out", str(tmp_path)]
    if command[0] == sys.executable:
        command[1:1] = ["-m", "hf_medvlm.cli"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RANDOMLY INITIALISED" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reloaded_with_remote_code"] and report["reloaded_answer_matches"]
    assert report["answer"].strip()
    assert (tmp_path / "model" / "modeling_llava_med_hires.py").exists()
    assert (tmp_path / "model" / "processing_llava_med_hires.py").exists()
