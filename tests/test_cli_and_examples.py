import argparse
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skfg.cli import main
from skfg.cli import main as cli_main

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_demo_prints_a_table(capsys):
    assert main(["demo", "--n-classes", "3", "--n-train", "6", "--n-test", "3", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "| LinearSVC" in out and "| LogisticRegression" in out and "test accuracy" in out


def _image_folder(root, n_classes, n_per_class, size=48):
    """Synthetic fine-grained images saved as ``root/class<k>/<i>.png``."""
    from skfg.datasets import make_fine_grained

    X, y = make_fine_grained(n_classes, n_per_class, image_size=size, random_state=0)
    for i, (img, label) in enumerate(zip(X, y)):
        d = root / f"class{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")


def test_demo_on_an_image_folder(tmp_path, capsys):
    _image_folder(tmp_path / "train", 3, 6)
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


# ------------------------------------------------------------------ fit / predict / evaluate
@pytest.fixture(scope="module")
def small_cars(shared_dataset, tmp_path_factory):
    """4 stanford_cars_a classes as an ImageFolder of links (train 10, val 3, test 4 each)."""
    root = shared_dataset("stanford_cars_a")
    out = tmp_path_factory.mktemp("cars4")
    for split, n in (("train", 10), ("val", 3), ("test", 4)):
        classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())[:4]
        for c in classes:
            (out / split / c).mkdir(parents=True)
            for f in sorted((root / split / c).iterdir())[:n]:
                (out / split / c / f.name).symlink_to(f)
    return out


def _one_line_error(capsys, argv, code=2):
    """Run the CLI expecting a user error: one stderr line, no traceback, exit code ``code``."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.data
def test_fit_predict_evaluate_round_trip_on_real_images(small_cars, tmp_path, capsys):
    import json

    from skfg import load_model
    from skfg.datasets import load_image_folder

    model_path = tmp_path / "model.skops"
    assert main(["fit", str(small_cars), "-o", str(model_path), "--image-size", "64", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "fitted softmax on 40 images of 4 classes" in out and "val accuracy" in out
    model = load_model(model_path)
    Xte, yte = load_image_folder(small_cars / "test")

    assert main(["predict", str(model_path), str(small_cars / "test"), "--top-k", "2", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == list(Xte)
    assert [r["predictions"][0]["label"] for r in rows] == list(model.predict(Xte))
    assert all(len(r["predictions"]) == 2 and r["predictions"][0]["probability"] >= r["predictions"][1]["probability"]
               for r in rows)
    assert main(["predict", str(model_path), Xte[0], Xte[1]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "path,label,probability" and lines[1].startswith(f"{Xte[0]},{model.predict(Xte[:1])[0]},")

    cm = tmp_path / "cm.csv"
    assert main(["evaluate", str(model_path), str(small_cars), "--format", "json", "--confusion", str(cm)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == 16 and result["accuracy"] == pytest.approx(model.score(Xte, yte))
    assert result["report"]["accuracy"] == pytest.approx(result["accuracy"])
    assert "top5_accuracy" not in result  # 4 classes
    counts = [list(map(int, line.split(",")[1:])) for line in cm.read_text().splitlines()[1:]]
    assert sum(map(sum, counts)) == 16 and sum(counts[i][i] for i in range(4)) == round(16 * result["accuracy"])
    png = tmp_path / "cm.png"
    assert main(["evaluate", str(model_path), str(small_cars), "--confusion", str(png)]) == 0
    assert "accuracy" in capsys.readouterr().out and png.stat().st_size > 1000

    from skfg.export import OnnxModel

    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(model_path), "--onnx", str(onnx_path)]) == 0
    assert "outputs logits, probabilities" in capsys.readouterr().out
    np.testing.assert_allclose(OnnxModel(onnx_path).predict_proba(Xte), model.predict_proba(Xte), atol=1e-4)

    int8_path = tmp_path / "model_int8.onnx"  # calibrated on (at most 8 of) the training folder's images
    assert main(["export", str(model_path), "--onnx", str(int8_path), "--int8", str(small_cars / "train"),
                 "--calibration-images", "8"]) == 0
    assert "int8, calibrated on 8 images" in capsys.readouterr().out
    int8 = OnnxModel(int8_path)
    assert int8.quantized == "int8" and OnnxModel(onnx_path).quantized is None
    assert int8_path.stat().st_size < 0.5 * onnx_path.stat().st_size  # int8 weights
    assert np.allclose(int8.predict_proba(Xte).sum(1), 1, atol=1e-3)
    assert _one_line_error(capsys, ["export", str(model_path), "--onnx", str(tmp_path / "x.onnx"), "--int8",
                                    str(tmp_path / "nowhere")]).count("no such image or folder")


@pytest.mark.data
def test_predict_serves_the_onnx_copy_fit_left_without_importing_torch(small_cars, tmp_path, monkeypatch):
    """``skfg fit`` caches an ONNX copy of the model; ``skfg predict`` then answers from it in a
    process that never imports torch, with the model file's predictions; a changed model file
    or a damaged copy falls back to the model file."""
    import subprocess

    pytest.importorskip("onnxruntime")
    from skfg.serving import onnx_copy_path

    monkeypatch.setenv("SKFG_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model.skops"
    assert main(["fit", str(small_cars), "-o", str(model), "--image-size", "64", "--quiet"]) == 0
    copy = onnx_copy_path(model)
    assert copy.is_file() and copy.parent == tmp_path / "cache" / "onnx"
    test = str(small_cars / "test")
    script = ("import sys; from skfg.cli import main; rc = main(sys.argv[1:]); "
              "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr); sys.exit(rc)")

    def predict():
        run = subprocess.run([sys.executable, "-c", script, "predict", str(model), test, "--top-k", "2"],
                             capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert run.returncode == 0, run.stderr
        return run.stdout, run.stderr.strip().splitlines()[-1]

    served, imported = predict()
    assert imported == "no torch"
    copy.unlink()  # no copy: the model file answers (torch), the same predictions, and the copy is made again
    from_model, imported = predict()
    assert imported == "torch imported" and copy.is_file()

    def rows(text):
        return [line.split(",") for line in text.splitlines()]

    for a, b in zip(rows(served), rows(from_model), strict=True):
        assert a[:2] == b[:2] and a[3] == b[3]  # path, labels
        assert abs(float(a[2]) - float(b[2])) <= 1e-3 if a[0] != "path" else a == b
    copy.write_bytes(b"damaged")
    assert predict() == (from_model, "torch imported")  # the damaged copy is replaced...
    assert predict() == (served, "no torch")  # ...and served again
    assert main(["fit", str(small_cars), "-o", str(model), "--image-size", "64", "--seed", "1", "--quiet"]) == 0
    assert onnx_copy_path(model) != copy  # another model file, another copy: never an old one


def test_fit_early_exit_and_joblib_models_need_trust(tmp_path, capsys):
    _image_folder(tmp_path / "data", 3, 8)
    model = tmp_path / "ee.joblib"
    argv = ["fit", str(tmp_path / "data"), "-o", str(model), "--model", "early-exit", "--image-size", "48",
            "--exits", "stage6,head", "--quiet"]
    assert main(argv) == 0
    assert "fitted early-exit on 24 images of 3 classes" in capsys.readouterr().out
    err = _one_line_error(capsys, ["predict", str(model), str(tmp_path / "data")])
    assert "is a joblib/pickle file, not skfg's safe format" in err and "--trust-pickle" in err
    assert main(["predict", str(model), str(tmp_path / "data"), "--trust-pickle"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 25
    err = _one_line_error(capsys, ["export", str(model), "--onnx", str(tmp_path / "ee.onnx"), "--trust-pickle"])
    assert "cannot export a EarlyExitClassifier" in err and not (tmp_path / "ee.onnx").exists()


@pytest.mark.parametrize("argv, expected", [
    (["fit", "/no/such/folder", "-o", "m.skops"], "No such folder: /no/such/folder"),
    (["fit", ".", "-o", "m.skops", "--backbone", "resnet9000"], "--backbone 'resnet9000' is not a backbone"),
    (["fit", ".", "-o", "m.skops", "--model", "svm"], "invalid choice: 'svm'"),
    (["predict", "/no/model.skops", "x.jpg"], "No such model file: /no/model.skops"),
    (["evaluate", "/no/model.skops", "/no/data"], "No such model file: /no/model.skops"),
    (["verify", "/no/such/folder"], "No such folder: /no/such/folder"),
    (["demo", "--data", "/no/such/folder"], "No such folder: /no/such/folder"),
])
def test_user_errors_are_one_line_with_a_nonzero_exit(argv, expected, capsys):
    assert expected in _one_line_error(capsys, argv)


def test_errors_name_the_bad_file(tmp_path, capsys):
    from skfg import SoftmaxClassifier, save_model

    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (80 * i, 40, 200 if c == "a" else 10)).save(data / c / f"{i}.png")
    (data / "b" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    assert main(["fit", str(data), "-o", str(tmp_path / "m.skops"), "--image-size", "40", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "--skip-unreadable" in err and not (tmp_path / "m.skops").exists()
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    assert "is not a model file of skfg" in _one_line_error(capsys, ["predict", str(text), str(data)])
    err = _one_line_error(capsys, ["fit", str(data), "-o", str(tmp_path / "m.skops"), "--trainable-blocks", "2"])
    assert "--trainable-blocks needs --fine-tune" in err
    from sklearn.pipeline import make_pipeline

    from skfg import CNNFeatureExtractor

    good = sorted(str(f) for f in data.rglob("*.png"))
    pipe = make_pipeline(CNNFeatureExtractor(image_size=40), SoftmaxClassifier(max_epochs=2, random_state=0))
    save_model(pipe.fit(good, [Path(f).parent.name for f in good]), tmp_path / "pipe.skops")
    err = _one_line_error(capsys, ["predict", str(tmp_path / "pipe.skops"), good[0], str(data / "b" / "broken.jpg")])
    assert "broken.jpg" in err


def test_version_and_python_dash_m():
    import subprocess

    from skfg import __version__

    out = subprocess.run([sys.executable, "-m", "skfg", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"skfg {__version__}"



# ------------------------------------------------------------------ interrupting and late failures
def test_ctrl_c_during_fine_tuning_keeps_the_model_and_the_rerun_resumes(tmp_path):
    import signal
    import subprocess
    import time

    _image_folder(tmp_path / "data" / "train", 3, 4, size=40)
    out = tmp_path / "m.skops"
    out.write_bytes(b"the previous model")
    cmd = [sys.executable, "-m", "skfg", "fit", str(tmp_path / "data"), "-o", str(out), "--fine-tune",
           "--image-size", "40", "--max-epochs", "40", "--quiet"]
    ckpt = tmp_path / "m.skops.checkpoints" / "checkpoint.pt"
    # SIGINT as a terminal delivers it, however pytest was started: a process started in the
    # background of a non-interactive shell ignores SIGINT, and its children inherit that
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore)
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert out.read_bytes() == b"the previous model"  # -o untouched
    assert f"{out} was not written; the checkpoint is kept in {ckpt.parent}: run the same command again" in err
    assert ckpt.exists()
    # the same command resumes from the checkpoint, saves the model and removes its default checkpoint folder
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming from the checkpoint in {ckpt.parent}" in done.stderr
    assert not ckpt.parent.exists()
    from skfg import load_model

    epochs = [h["epoch"] for h in load_model(out).history_]  # the head's epochs, then the 40 of the whole network
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 40


def test_fit_checks_its_paths_before_any_work(tmp_path, capsys):
    import re

    _image_folder(tmp_path / "data" / "train", 2, 2, size=32)
    _image_folder(tmp_path / "only_val" / "val", 2, 2, size=32)
    (tmp_path / "folder.skops").mkdir()
    for argv, message in [
        (["fit", str(tmp_path / "data"), "-o", str(tmp_path / "missing" / "m.skops")], "No such folder: .*missing"),
        (["fit", str(tmp_path / "only_val"), "-o", str(tmp_path / "m.skops")],
         r"No such folder: .*only_val/train \(.*only_val has val/\)"),
        (["evaluate", str(tmp_path / "m.skops"), str(tmp_path / "data"), "--confusion", str(tmp_path / "no" / "c.csv")],
         "No such folder: .*no .*confusion matrix"),
        (["export", str(tmp_path / "m.skops"), "--onnx", str(tmp_path / "no" / "m.onnx")], "No such folder: .*ONNX"),
        (["fit", str(tmp_path / "data"), "-o", str(tmp_path / "folder.skops")], "is a folder; give a file name"),
        (["fit", str(tmp_path / "data"), "-o", str(tmp_path / "m.skops"), "--fine-tune", "--checkpoint-dir",
          str(tmp_path / "none" / "ckpt")], "No such folder: .*none/ckpt .*checkpoint"),
        (["fit", str(tmp_path / "data"), "-o", str(tmp_path / "m.skops"), "--checkpoint-dir", "x"],
         "--checkpoint-dir needs --fine-tune"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), (argv, err)
    assert not (tmp_path / "m.skops").exists()


def test_a_missing_split_is_named_not_replaced_by_the_root(tmp_path, capsys):
    from skfg.cli import _load_split

    _image_folder(tmp_path / "train", 2, 2, size=32)
    _image_folder(tmp_path / "test", 2, 2, size=32)
    with pytest.raises(FileNotFoundError, match=r"No such folder: .*tset \(.* has train/, test/\)"):
        _load_split(tmp_path, "tset")
    X, y = _load_split(tmp_path / "train", "test")  # a folder of class folders: itself
    assert all(x.startswith(str(tmp_path / "train")) for x in X) and len(X) == 4
    with pytest.raises(SystemExit) as stop:
        main(["predict", "m.skops", "x.png", "--top-k", "0"])
    assert stop.value.code == 2
    assert "--top-k: must be at least 1, got 0" in capsys.readouterr().err


def test_skfg_verify_on_a_missing_folder_is_one_line_and_its_own_exit_code(tmp_path, capsys):
    code = cli_main(["verify", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "No such folder" in err and "Traceback" not in err


def test_the_command_line_starts_without_torch():
    """``skfg --help`` and ``--version`` must start fast: nothing heavy at import (the
    times are measured by benchmarks/engines.py, not here); serving an ONNX copy needs
    neither torch nor torchvision."""
    code = ("import sys, skfg, skfg.cli\n"
            "assert skfg.__version__\n"
            "heavy = [m for m in ('torch', 'torchvision', 'sklearn', 'faiss', 'PIL') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "skfg.cli.build_parser().format_help()\n"
            "assert 'torch' not in sys.modules\n"
            "import skfg.serving, skfg._decode\n"
            "assert not [m for m in ('torch', 'torchvision', 'sklearn') if m in sys.modules]\n"
            "from skfg import SoftmaxClassifier\n"  # the public names still load, on first use
            "assert SoftmaxClassifier.__module__ == 'skfg.softmax' and 'torch' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_backbone_is_refused_before_any_work(tmp_path, capsys):
    from skfg.cli import main

    assert main(["fit", str(tmp_path), "-o", str(tmp_path / "m.skops"), "--backbone", "efficientnet_lit0"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'efficientnet_lite0'" in err and "choose one of" in err


def test_model_files_are_recognised_before_anything_is_unpickled(tmp_path, capsys):
    """The model argument forgotten (a JPEG first), a damaged .skops, a torch file, a pickle
    without trust: each its own one-line message; "trust" only for the pickle."""
    import joblib

    _image_folder(tmp_path / "data", 2, 2, size=32)
    photo = next((tmp_path / "data").rglob("*.png"))
    (tmp_path / "cut.skops").write_bytes(b"PK\x03\x04 and then nothing")
    joblib.dump({"not": "a model"}, tmp_path / "m.joblib")
    cases = [(["predict", str(photo), str(photo)], "is an image, not a model file: the model file comes first"),
             (["evaluate", str(tmp_path / "cut.skops"), str(tmp_path / "data")], r"damaged \(truncated\?\)"),
             (["export", str(photo), "--onnx", str(tmp_path / "x.onnx")], "is an image"),
             (["predict", str(tmp_path / "m.joblib"), str(photo)], "joblib/pickle file.*--trust-pickle"),
             (["predict", str(tmp_path / "data"), str(photo)], r"No such model file: .*data \(a folder\)")]
    for argv, message in cases:
        err = _one_line_error(capsys, argv)
        assert re.search(message, err), (argv, err)
        assert ("trust" in err) == argv[1].endswith(".joblib"), err


def test_output_files_need_a_model_ending_and_typos_get_a_suggestion(tmp_path, capsys):
    for argv, message in [(["fit", str(tmp_path), "-o", "model.pt"], r"'model.pt' has no model file ending: use .skops"),
                          (["fit", str(tmp_path), "-o", "m.skops", "--epochs", "3"], "did you mean --max-epochs"),
                          (["predict", "m.skops", "x.jpg", "--topk", "3"], "did you mean --top-k")]:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and len(err.strip().splitlines()) == 1, err


def test_help_is_plain_text_and_every_option_says_what_it_does(capsys):
    from skfg.cli import build_parser

    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert "default" in action.help, (name, action.dest)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_fit_reports_every_unreadable_image_before_training_and_can_skip_them(tmp_path, capsys, monkeypatch):
    from sklearn.pipeline import Pipeline

    _image_folder(tmp_path / "data" / "train", 2, 4, size=32)
    _image_folder(tmp_path / "data" / "val", 2, 2, size=32)
    (tmp_path / "data" / "train" / "class0" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "data" / "train" / "class1" / "empty.png").write_bytes(b"")
    (tmp_path / "data" / "val" / "class1" / "text.jpg").write_text("not an image")
    fits = []
    monkeypatch.setattr(Pipeline, "fit", lambda self, X, y: fits.append(len(X)) or self)
    argv = ["fit", str(tmp_path / "data"), "-o", str(tmp_path / "m.joblib"), "--image-size", "32", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fits == [] and not (tmp_path / "m.joblib").exists()  # nothing trained
    assert "cut.jpg" in err and "empty.png" in err and "2 of the 10 training images are unreadable" in err
    assert "--skip-unreadable" in err and "skfg verify" in err
    monkeypatch.setattr(Pipeline, "predict", lambda self, X: np.asarray(["class0"] * len(X)))
    assert main(argv + ["--skip-unreadable"]) == 0
    err = capsys.readouterr().err
    assert fits == [8] and "leaving out 2 unreadable training images" in err and "text.jpg" in err


def test_evaluate_can_score_the_known_classes_of_a_folder_with_new_ones(tmp_path, capsys):
    from skfg import CNNFeatureExtractor, SoftmaxClassifier, save_model
    from sklearn.pipeline import make_pipeline
    from skfg.datasets import load_image_folder

    _image_folder(tmp_path / "data", 3, 4, size=32)
    X, y = load_image_folder(tmp_path / "data")
    known = y != "class2"
    model = make_pipeline(CNNFeatureExtractor(image_size=32), SoftmaxClassifier(max_epochs=2, random_state=0))
    save_model(model.fit(X[known], y[known]), tmp_path / "m.skops")
    argv = ["evaluate", str(tmp_path / "m.skops"), str(tmp_path / "data")]
    assert "--known-classes-only" in _one_line_error(capsys, argv)
    assert main(argv + ["--known-classes-only", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n_images"] == 8 and "leaving out 4 images" in captured.err


def test_predict_and_evaluate_take_the_onnx_file_that_export_wrote(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from skfg import CNNFeatureExtractor, SoftmaxClassifier, save_model
    from sklearn.pipeline import make_pipeline
    from skfg.datasets import load_image_folder

    _image_folder(tmp_path / "data", 2, 4, size=32)
    X, y = load_image_folder(tmp_path / "data")
    model = make_pipeline(CNNFeatureExtractor(image_size=32), SoftmaxClassifier(max_epochs=2, random_state=0))
    save_model(model.fit(X, y), tmp_path / "m.skops")
    assert main(["export", str(tmp_path / "m.skops"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m.onnx"), str(tmp_path / "data"), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    proba = model.predict_proba(X)
    assert [r["predictions"][0]["label"] for r in rows] == model.classes_[proba.argmax(1)].tolist()
    assert main(["evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "data"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 8
    err = _one_line_error(capsys, ["export", str(tmp_path / "m.onnx"), "--onnx", str(tmp_path / "again.onnx")])
    assert "is an ONNX file, not a model file of skfg fit (it is already exported)" in err
