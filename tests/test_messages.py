"""Warnings point at the user's call; progress bars never collide with warnings, log
lines or errors; epoch numbers agree with ``history_`` (skfg._messages)."""

import logging
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from skfg import SoftmaxClassifier
from skfg._messages import bar_delay, progress_bar
from skfg._training import fit_loop, make_optimizer


def _scripted_divergence(verbose, epoch_offset=0):
    """A fit_loop whose loss jumps at its third epoch (the guard fires there)."""
    module = nn.Linear(2, 1)
    opt = make_optimizer([{"params": module.parameters()}], "sgd", lr=0.1, momentum=0)
    scripted, epoch = [1.0, 0.8, 5.0, 0.5], [0]

    def step(x):
        return scripted[epoch[0]] + module(x).mean(), len(x)

    def callback(e):
        epoch[0] = e

    return fit_loop(module, [torch.ones(4, 2)], step, optimizer=opt, max_epochs=4, divergence_factor=1.5,
                    epoch_callback=callback, verbose=verbose, epoch_offset=epoch_offset)


def test_a_warning_from_training_points_at_the_callers_file():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SoftmaxClassifier(max_epochs=1, validation_fraction=0.9, random_state=0).fit(
            np.random.RandomState(0).randn(10, 3), np.arange(10) % 5)
    (w,) = [w for w in caught if "validation_fraction" in str(w.message)]
    assert w.filename == __file__, w.filename


def test_a_warning_through_a_pipeline_and_grid_search_points_at_the_caller():
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = np.random.RandomState(0).randn(20, 3), np.arange(20) % 2
    search = GridSearchCV(make_pipeline(StandardScaler(), SoftmaxClassifier(max_epochs=1, random_state=0)),
                          {"softmaxclassifier__precision": ["bfloat16", "float16"]}, cv=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search.fit(X, y)
    ours = [w for w in caught if "training in float32" in str(w.message)]
    assert ours and all(w.filename == __file__ for w in ours), {w.filename for w in ours}


def test_the_divergence_warning_gives_the_epoch_of_history_and_is_written_above_the_bar(capsys):
    with warnings.catch_warnings():  # printed to stderr, as Python does outside pytest
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        result = _scripted_divergence(verbose=True, epoch_offset=10)
    err = capsys.readouterr().err
    # the fit's earlier phase had 10 epochs: the loop's third epoch is the fit's 13th
    assert "at epoch 13," in err and result["history"][2]["lr_halvings"] == 1
    segments = re.split(r"[\r\n]", err)
    (warning,) = [s for s in segments if "RuntimeWarning" in s]
    assert warning.startswith(__file__) and "epochs" not in warning  # on its own line, not after the bar
    assert any(s.startswith("epochs: 100%") for s in segments)


def test_fine_tuning_logs_epochs_numbered_as_in_history(caplog):
    from skfg import CNNFeatureExtractor
    from skfg.datasets import make_fine_grained

    X, y = make_fine_grained(3, 4, image_size=32, random_state=0)
    clf = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=32), head_epochs=2, max_epochs=1,
                            batch_size=6, random_state=0)
    with caplog.at_level(logging.INFO, logger="skfg"):
        clf.fit(X, y)
    epochs = [int(m.group(1)) for m in (re.match(r"epoch (\d+)/(\d+):", r.getMessage()) for r in caplog.records) if m]
    assert epochs == [h["epoch"] for h in clf.history_] == [1, 2, 3]
    assert "training done: 3 epochs" in caplog.text


def test_auto_bars_only_for_a_person_and_only_after_a_few_seconds(monkeypatch):
    assert bar_delay(False) is None and bar_delay(0) is None and bar_delay(True) == 0.0 and bar_delay(2) == 0.0
    assert bar_delay("auto") is None  # pytest's captured stderr is no terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert bar_delay("auto") >= 2.0
    with pytest.raises(ValueError, match="verbose='loud'"):
        bar_delay("loud")
    with pytest.raises(ValueError, match="verbose"):
        SoftmaxClassifier(verbose="loud").fit(np.zeros((4, 2)), [0, 1, 0, 1])


def test_the_bar_is_closed_and_warnings_restored_when_the_work_fails(capsys):
    show = warnings.showwarning
    with pytest.raises(OSError, match="disk full"):
        with progress_bar(True, 10, "extracting", "img") as bar:
            bar.update(3)
            raise OSError("disk full")
    assert warnings.showwarning is show
    assert capsys.readouterr().err.endswith("\n")  # the bar's line is ended: the next message starts afresh


def test_the_estimators_default_to_auto_bars():
    from skfg import CNNFeatureExtractor, EarlyExitClassifier, ImpostorClassifier, ImprintedClassifier, ObjectCropper

    for est in (SoftmaxClassifier(), ImpostorClassifier(), ImprintedClassifier(), CNNFeatureExtractor(),
                EarlyExitClassifier(), ObjectCropper()):
        assert est.get_params()["verbose"] == "auto", type(est).__name__


def _run_in_a_terminal(code, timeout=300):
    """Run ``python -c code`` with stdout and stderr on a pseudo-terminal; its output."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100 (a new pty has 0 x 0)
    env = dict(os.environ, COLUMNS="100", PYTHONWARNINGS="ignore::DeprecationWarning")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
                            env=env, close_fds=True)
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            proc.kill()
            raise TimeoutError(out.decode(errors="replace"))
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(leader)
    return proc.returncode, out.decode(errors="replace")


def test_in_a_terminal_the_cli_error_stands_on_its_own_line_after_the_bar(tmp_path):
    """``skfg predict`` on images whose last one is broken, in a terminal: the extraction
    bar is on screen when decoding fails; the one-line error must start its own line."""
    from PIL import Image

    from skfg import CNNFeatureExtractor, save_model
    from skfg.datasets import make_fine_grained
    from sklearn.pipeline import make_pipeline

    X, y = make_fine_grained(2, 20, image_size=32, random_state=0)
    paths = []
    for i, img in enumerate(X):
        paths.append(str(tmp_path / f"{i:02d}.png"))
        Image.fromarray(img).save(paths[-1])
    (tmp_path / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    model = make_pipeline(CNNFeatureExtractor(image_size=32, batch_size=4, engine="eager"),
                          SoftmaxClassifier(max_epochs=2, random_state=0)).fit(paths, y)
    save_model(model, tmp_path / "m.skops")
    code = ("import skfg._messages as m; m.AUTO_DELAY = 0.0  # the bar at once, not after a few seconds\n"
            "from skfg.cli import main\n"
            f"raise SystemExit(main(['predict', {str(tmp_path / 'm.skops')!r}, {str(tmp_path)!r}]))")
    rc, out = _run_in_a_terminal(code)
    assert rc == 2, out
    assert "extracting" in out, out  # the bar was shown ...
    lines = re.split(r"[\r\n]", out)
    (error,) = [s for s in lines if "zz_broken.jpg" in s]
    assert error.startswith("skfg predict: "), out  # ... and the error is not glued onto it
    assert "extracting" not in out[out.index("skfg predict: "):], out  # no stale bar after the error


def test_score_names_the_labels_the_model_never_saw():
    from skfg import EarlyExitClassifier

    X, y = np.random.RandomState(0).randn(30, 4), np.arange(30) % 3
    for clf in (SoftmaxClassifier(max_epochs=2, random_state=0), EarlyExitClassifier(feature_groups=[2, 2])):
        clf.fit(X, y)
        y_new = np.where(np.arange(30) < 5, 7, y)  # five samples of a class 7
        with pytest.warns(UserWarning, match=r"not trained on \(7\): their samples count as wrong") as record:
            score = clf.score(X, y_new)
        assert record[0].filename == __file__
        assert score == pytest.approx(np.mean(clf.predict(X) == y_new))


def test_an_auto_bar_of_a_short_fit_prints_nothing(monkeypatch, capsys):
    """A fit shorter than the delay leaves no half-drawn bar for the next line to glue onto."""
    monkeypatch.setattr("skfg._messages._interactive", lambda: True)
    SoftmaxClassifier(max_epochs=30, random_state=0).fit(np.random.RandomState(0).randn(40, 3), np.arange(40) % 2)
    assert capsys.readouterr().err == ""
