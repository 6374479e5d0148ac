import runpy
import sys
from pathlib import Path

import pytest
from PIL import Image

from skfg.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_demo_prints_a_table(capsys):
    assert main(["demo", "--n-classes", "3", "--n-train", "6", "--n-test", "3", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "| LinearSVC" in out and "| LogisticRegression" in out and "test accuracy" in out


def test_demo_on_an_image_folder(tmp_path, capsys):
    from skfg.datasets import make_fine_grained

    X, y = make_fine_grained(3, 6, image_size=48, random_state=0)
    for i, (img, label) in enumerate(zip(X, y)):
        d = tmp_path / "train" / f"class{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    assert main(["demo", "--data", str(tmp_path), "--image-size", "48"]) == 0
    assert "25% of train held out" in capsys.readouterr().out


def test_verify_lists_bad_files(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    assert main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "bad.jpg" in out and "2 images checked, 1 unreadable" in out


def test_backbones_lists_stages(capsys):
    assert main(["backbones"]) == 0
    assert "resnet18" in capsys.readouterr().out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_run(path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
