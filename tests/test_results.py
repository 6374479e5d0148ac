"""Published numbers stay true without freezing the code: a stamped result file whose
measured code changed since is listed as stale (``benchmarks/status.py``) and its numbers
are marked in the docs; no test fails because of it (``benchmarks/ledger/stamp.py`` stamps each
file with the hashes of the code it ran)."""

import importlib
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from ledger import parts as _parts  # noqa: E402
from ledger import stamp as ledger_stamp  # noqa: E402
from ledger import status, sweep  # noqa: E402
from ledger.hashing import (HASHING, _parse, code_hash, counted_definitions, definition_hashes,  # noqa: E402
                            definition_of, executed_definitions, stale_definitions, stale_results)
from ledger.stamp import provenance  # noqa: E402
from ledger.tracer import TRACER, Tracer, is_measuring_script  # noqa: E402


def _stamped_repo(tmp_path):
    (tmp_path / "skfg").mkdir()
    module = tmp_path / "skfg" / "m.py"
    module.write_text("def f():\n    return 1\n\n\ndef g():\n    return 2\n")
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    stamp = {"commit": "abcdef0123", "date": "2026-12-01 10:00 UTC", "run": "2026-12-01 09:30:00 UTC pid 1",
             "command": "python benchmarks/r.py", "code": {"skfg/m.py": code_hash(module)},
             "definitions": {"skfg/m.py": definition_hashes(module)}, "hashing": HASHING}
    stamp["definitions"]["skfg/m.py"].pop("g")  # the run executed f only
    (results / "r.json").write_text(json.dumps({"acc": 0.5, "provenance": stamp}))
    return module, results


def test_a_change_to_measured_code_marks_the_result_stale_and_fails_nothing(tmp_path):
    from ledger.docs import _NOTES, readme_mark, stale_note, sync_readme

    module, results = _stamped_repo(tmp_path)
    assert status.render(results, tmp_path)[1] == {}
    module.write_text(module.read_text().replace("return 2", "return 3"))  # code the run did not execute
    assert status.render(results, tmp_path)[1] == {}
    module.write_text(module.read_text().replace("return 1", "return 4"))
    text, stale = status.render(results, tmp_path)
    assert stale == {"r": ["skfg/m.py:f"]}
    assert "| r |  | abcdef0 | 2026-12-01 10:00 UTC | skfg/m.py:f | `python benchmarks/r.py` |" in text
    note = "measured at abcdef0 (2026-12-01 10:00 UTC), before changes to skfg/m.py:f"
    assert status.stale_notes(results, tmp_path) == {"r": note}
    _NOTES.clear()
    assert stale_note("r", results, tmp_path) == note and stale_note("other", results, tmp_path) is None
    readme = tmp_path / "README.md"
    readme.write_text("reaches <!-- result r:acc|pct -->50.0 %<!-- /result -->.\n")
    assert sync_readme(readme, check=True, results_dir=results, repo=tmp_path) == []  # stale is not a failure
    sync_readme(readme, results_dir=results, repo=tmp_path)
    assert readme.read_text() == f"reaches <!-- result r:acc|pct -->50.0 %{readme_mark(note)}<!-- /result -->.\n"
    assert sync_readme(readme, check=True, results_dir=results, repo=tmp_path) == []
    _NOTES.clear()


def test_the_docs_render_a_stale_number_with_its_mark_and_note(tmp_path):
    pytest.importorskip("docutils")
    from ledger.docs import _NOTES, result_nodes

    module, results = _stamped_repo(tmp_path)
    _NOTES.clear()
    fresh = result_nodes("r:acc|pct", results, tmp_path)
    assert [n.astext() for n in fresh] == ["50.0 %"]  # fresh: the number alone
    module.write_text(module.read_text().replace("return 1", "return 4"))
    _NOTES.clear()
    number, mark = result_nodes("r:acc|pct", results, tmp_path)
    (abbreviation,) = mark.children
    assert number.astext() == "50.0 %" and mark.tagname == "superscript" and abbreviation.astext() == "stale"
    assert abbreviation["explanation"] == ("measured at abcdef0 (2026-12-01 10:00 UTC), before changes to "
                                           "skfg/m.py:f")
    _NOTES.clear()


def test_the_status_of_the_repositorys_results_renders():

    text, stale = status.render()
    assert text.startswith("# Status of the results") and all(f"| {name} |" in text for name in stale)


def test_the_staleness_check_catches_changed_and_removed_code(tmp_path):
    (tmp_path / "skfg").mkdir()
    module = tmp_path / "skfg" / "m.py"
    module.write_text('"""Doc."""\n\ndef f():\n    """Doc."""\n    return 1  # a comment\n')
    results = tmp_path / "results"
    results.mkdir()
    stamp = {"commit": "abc", "definitions": {"skfg/m.py": definition_hashes(module)}, "hashing": HASHING}
    (results / "r.json").write_text(json.dumps({"acc": 0.5, "provenance": stamp}))
    (results / "legacy.json").write_text(json.dumps({"acc": 0.4}))  # unstamped: not checked
    (results / "other.json").write_text(json.dumps({"acc": 0.4, "provenance": dict(stamp, hashing=HASHING - 1)}))
    assert stale_results(results, tmp_path) == {"other.json": ["hashed another way"]}  # re-run it
    (results / "other.json").unlink()
    assert stale_results(results, tmp_path) == {}
    module.write_text('"""Other doc."""\n\ndef f():\n    """Changed doc."""\n    return 1  # changed comment\n')
    assert stale_results(results, tmp_path) == {}  # docs and comments are not the measured code
    module.write_text('def f():\n    return 2\n')
    assert stale_results(results, tmp_path) == {"r.json": ["skfg/m.py:f"]}
    module.unlink()
    assert stale_results(results, tmp_path) == {"r.json": ["skfg/m.py: removed"]}


def test_provenance_records_the_imported_skfg_modules():
    importlib.import_module("skfg.metrics")

    stamp = provenance()
    assert stamp["date"] and stamp["hashing"] == HASHING
    assert stamp["definitions"]["skfg/metrics.py"] == definition_hashes(REPO / "skfg" / "metrics.py")
    # no trace in the test process: every definition of the imported modules counts as run
    assert stamp["executed"].startswith("unknown")
    assert stamp["definitions"]["skfg/metrics.py"] == definition_hashes(REPO / "skfg" / "metrics.py")


MODULE = '''"""Doc."""
import math

import logging

logger = logging.getLogger(__name__)
SCALE = 2


class Base:
    def n(self):
        return 1


class C(Base):
    """A class."""
    k = 3

    def m(self, x):
        """Doc."""
        def inner(y):
            return y + 1
        return inner(x) * SCALE  # a comment

    def unused(self):
        return 0


def f(x):
    logger.info("f(%s)", x)
    return x + 1


def g(x):
    return x - 1
'''


def _stamp_of(tmp_path, executed):
    """The stamp of a run that executed these definitions, counted as a traced run's is."""
    path = str((tmp_path / "skfg" / "m.py").resolve())
    return {"skfg/m.py": counted_definitions({path: _parse(path)}, {path: set(executed)})[path]}


def _edited(tmp_path, old, new):
    path = tmp_path / "skfg" / "m.py"
    path.write_text(MODULE.replace(old, new, 1))
    return path


def test_the_definition_check_flags_only_changes_to_code_that_ran(tmp_path):
    (tmp_path / "skfg").mkdir()
    path = tmp_path / "skfg" / "m.py"
    path.write_text(MODULE)
    stamp = _stamp_of(tmp_path, ["<module>", "Base", "Base.n", "C", "C.m", "f"])
    assert stale_definitions(stamp, tmp_path) == []
    cases = {  # edit -> what the check reports
        ("return x - 1", "return x - 2"): [],  # g never ran
        ("return 0", "return 5"): [],  # nor C.unused
        ("return x + 1", "return x + 2"): ["skfg/m.py:f"],
        ("return y + 1", "return y + 2"): ["skfg/m.py:C.m"],  # a nested function belongs to its method
        ("SCALE = 2", "SCALE = 3"): ["skfg/m.py:SCALE"],  # C.m reads it
        ("SCALE = 2", "SCALE = 2\nif SCALE:\n    pass"): ["skfg/m.py:<module>"],
        ("k = 3", "k = 4"): ["skfg/m.py:C"],
        ("class C(Base):", "class C(Base, dict):"): ["skfg/m.py:C"],
        ('"""Doc."""\n        def', '"""Other doc."""\n        def'): [],
        ("# a comment", "# another comment"): [],
        ('logger.info("f(%s)", x)', 'logger.debug("now f(%s)", x)'): [],  # logging cannot change a number
        ("import math", "import math\nimport os"): [],
        ("SCALE = 2", "SCALE = 2\n__all__ = ['f']"): [],
        ('logger.info("f(%s)", x)', 'logger.info("f(%s)", x)\n    logger.add(x)'): ["skfg/m.py:f"],  # not logging
        ("    def unused(self):", "    def helper(self):\n        return 7\n\n    def unused(self):"): [],
        ("    def unused(self):", "    def n(self):\n        return 7\n\n    def unused(self):"):
            ["skfg/m.py:C.n (new override)"],
        ("    def unused(self):", "    def __len__(self):\n        return 7\n\n    def unused(self):"):
            ["skfg/m.py:C.__len__ (new dunder)"],
        ("def g(x):", "def h():\n    return 1\n\n\ndef g(x):"): [],
        ("    def unused(self):", "    def m2(self):\n        return 7\n\n    def unused(self):"): [],
        ("def g(x):", "@register\ndef h():\n    return 1\n\n\ndef g(x):"): ["skfg/m.py:h (new, decorated)"],
        ("    def unused(self):", "    @classmethod\n    def make(cls):\n        return cls()\n\n    def unused(self):"): [],
        ("def f(x):", "def f2(x):"): ["skfg/m.py:f"],  # removed
    }
    for (old, new), expected in cases.items():
        assert old in MODULE, old
        _edited(tmp_path, old, new)
        assert stale_definitions(stamp, tmp_path) == expected, (old, new)
    # with the list of every definition the code had, an existing one that did not run is not new
    path.write_text(MODULE.replace("    def unused(self):", "    def __len__(self):\n        return 7\n\n    def unused(self):"))
    traced = _stamp_of(tmp_path, ["<module>", "Base", "C", "C.m", "f"])
    assert stale_definitions(traced, tmp_path) == ["skfg/m.py:C.__len__ (new dunder)"]
    assert stale_definitions(traced, tmp_path, {"skfg/m.py": sorted(definition_hashes(path))}) == []
    # an override of a base method that never ran (or did not exist) cannot have been called
    _edited(tmp_path, "    def unused(self):", "    def n(self):\n        return 7\n\n    def unused(self):")
    assert stale_definitions(_stamp_of(tmp_path, ["<module>", "Base", "C", "C.m", "f"]), tmp_path) == []
    path.unlink()
    assert stale_definitions(stamp, tmp_path) == ["skfg/m.py: removed"]


def test_the_tracer_records_the_definitions_a_run_executes(tmp_path):
    (tmp_path / "skfg").mkdir()
    path = tmp_path / "skfg" / "m.py"
    path.write_text(MODULE)
    spec = importlib.util.spec_from_file_location("skfg_traced_m", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tracer = Tracer()
    tracer.start()
    try:
        module.C().m(1)
        with tracer.paused():
            module.g(1)  # timed code runs untraced
            untimed = threading.Thread(target=module.g, args=(2,))  # nor do threads started meanwhile
            untimed.start()
            untimed.join()
    finally:
        tracer.stop()
    stamp = executed_definitions([path], tracer, tmp_path)
    # class headers ran at import: C's counts (C.m ran), with its base; SCALE is read by C.m
    assert set(stamp["skfg/m.py"]) == {"<module>", "Base", "C", "C.m", "SCALE"}
    assert definition_of("C.m.<locals>.inner", stamp["skfg/m.py"]) == "C.m"
    assert definition_of("<listcomp>", stamp["skfg/m.py"]) == "<module>"


def test_the_tracer_records_code_run_in_threads_started_after_it():
    import skfg.metrics

    tracer = Tracer()
    tracer.start()
    try:
        worker = threading.Thread(target=skfg.metrics.entropy, args=(np.array([[0.9, 0.1], [0.2, 0.8]]),))
        worker.start()
        worker.join()
    finally:
        tracer.stop()
    assert (skfg.metrics.__file__, "entropy") in tracer.codes()
    assert not tracer.active
    before = tracer.calls()  # what the hook costs is its calls times its cost per call (tracer_overhead.py)
    tracer.start()
    try:
        for _ in range(10):
            skfg.metrics.entropy(np.array([[0.5, 0.5]]))
    finally:
        tracer.stop()
    assert tracer.calls() - before >= 10


def test_the_tracer_starts_only_for_a_measuring_script(tmp_path):
    benchmarks = REPO / "benchmarks"
    assert is_measuring_script(str(benchmarks / "recipe.py"), benchmarks)
    assert not is_measuring_script(str(benchmarks / "ledger"), benchmarks)  # python benchmarks/ledger status
    assert not is_measuring_script(str(benchmarks / "ledger" / "sweep.py"), benchmarks)
    assert not is_measuring_script("", benchmarks) and not TRACER.active  # the tests: off


OTHER = '''
RECIPE = {"lr": 0.01}
UNUSED_RECIPE = {"lr": 0.1}
'''

CONSTANTS = '''
import dataclasses

from .other import RECIPE as DEFAULTS, UNUSED_RECIPE

LIMIT = 10
DOUBLE = 2 * LIMIT
NEVER = 3


class Used:
    settings = DEFAULTS

    def m(self):
        return DOUBLE


class Unused:
    settings = UNUSED_RECIPE

    def m(self):
        return NEVER


@dataclasses.dataclass
class Data:
    size: int = 4


def f():
    return Used().m()
'''


def test_a_constant_or_class_header_counts_only_when_code_that_ran_reads_it(tmp_path):
    (tmp_path / "skfg").mkdir()
    (tmp_path / "skfg" / "__init__.py").write_text("")
    (tmp_path / "skfg" / "other.py").write_text(OTHER)
    path = tmp_path / "skfg" / "m.py"
    path.write_text(CONSTANTS)
    files = [str((tmp_path / "skfg" / n).resolve()) for n in ("m.py", "other.py")]
    counted = counted_definitions({f: _parse(f) for f in files}, {files[0]: {"f", "Used.m"}})
    # DOUBLE read by Used.m, LIMIT through DOUBLE, RECIPE through an import (renamed) in a used
    # class's header; a dataclass's header counts (its methods are generated); Unused does not
    assert set(counted[files[0]]) == {"<module>", "f", "Used", "Used.m", "DOUBLE", "LIMIT", "Data"}
    assert set(counted[files[1]]) == {"<module>", "RECIPE"}
    stamp = {f"skfg/{n}": counted[f] for n, f in zip(("m.py", "other.py"), files)}
    assert stale_definitions(stamp, tmp_path) == []
    cases = {
        ("m.py", "LIMIT = 10", "LIMIT = 11"): ["skfg/m.py:LIMIT"],
        ("m.py", "NEVER = 3", "NEVER = 4"): [],  # only Unused.m, which never ran, reads it
        ("m.py", "settings = UNUSED_RECIPE", "settings = None"): [],  # a class that was not used
        ("m.py", "size: int = 4", "size: int = 5"): ["skfg/m.py:Data"],
        ("other.py", '{"lr": 0.01}', '{"lr": 0.02}'): ["skfg/other.py:RECIPE"],
        ("other.py", '{"lr": 0.1}', '{"lr": 0.2}'): [],
    }
    for (name, old, new), expected in cases.items():
        source = CONSTANTS if name == "m.py" else OTHER
        assert old in source, old
        (tmp_path / "skfg" / name).write_text(source.replace(old, new, 1))
        assert stale_definitions(stamp, tmp_path) == expected, (old, new)
        (tmp_path / "skfg" / name).write_text(source)


def test_every_measured_number_in_the_docs_comes_from_a_result_spec():
    from ledger.docs import unsourced_numbers

    found = [f"{path.relative_to(REPO)}:{line}: {number}"
             for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.rst"))]
             for line, number in unsourced_numbers(path.read_text())]
    assert not found, ("numbers with a unit that no result spec backs (use :result:, or mark a paper's "
                       ":paper:`... <source>` or a setting :given:`...`):\n" + "\n".join(found))


def test_a_planted_number_fails_the_docs_check_even_when_a_results_file_holds_it():
    from ledger.docs import unsourced_numbers

    page = ("Ours reaches 67.3 % and runs 2.9x faster, 12 ms an image, in 3 min.\n"
            "The paper reports :paper:`78.7 % <impostor networks Table 1>`; a :given:`95 %` interval;\n"
            "``min(4, cpu_count)`` is 4 x 4; :result:`recipe:summary.recipe_default.test_mean|pct`.\n"
            "A block::\n\n    pipe.score(X)  # 0.9 x\n\nafter it 5 ms.\n")
    assert unsourced_numbers(page) == [(1, "67.3 %"), (1, "2.9x"), (1, "12 ms"), (1, "3 min"), (8, "5 ms")]
    readme = "<!-- result r:a|pct -->67.3 %<!-- /result --> and <!-- paper x Table 1 -->8 %<!-- /paper -->, 9 %\n"
    assert unsourced_numbers(readme) == [(1, "9 %")]


def test_a_planted_range_or_recall_fails_the_docs_check():
    from ledger.docs import unsourced_numbers

    page = ("Early layers are 7-26 points less accurate, a fit takes 12–16 minutes, 3 to 4 ms a query\n"
            "at 0.95 recall; the paper: :paper:`1-2 points <elope Table 5>`; crops of :given:`35-100 %`.\n")
    assert unsourced_numbers(page) == [(1, "7-26 points"), (1, "12–16 minutes"), (1, "3 to 4 ms"), (2, "0.95 recall")]
    unsourced = "A paper says :paper:`8 %` and <!-- paper -->9 %<!-- /paper -->; :paper:`7 % <elope Table 5>`.\n"
    assert unsourced_numbers(unsourced) == [(1, "8 %"), (1, "9 %")]  # a quotation names its source


def test_a_file_filled_over_several_runs_keeps_each_runs_provenance(tmp_path, monkeypatch):

    monkeypatch.setattr(ledger_stamp, "RESULTS", tmp_path)
    monkeypatch.setattr(ledger_stamp, "_MERGED", {})
    importlib.import_module("skfg.metrics")
    legacy = provenance()  # a stamp without a run id: its rows' run is "legacy"
    (tmp_path / "t.json").write_text(json.dumps({"rows": [{"name": "a"}, {"name": "b"}], "provenance": legacy}))
    rows = ledger_stamp.mergeable_rows("t")
    assert [r["run"] for r in rows] == ["legacy", "legacy"]
    rows = [r for r in rows if r["name"] != "b"] + [{"name": "b"}]  # b measured again
    ledger_stamp.write_results("t", {"rows": rows}, [("a",), ("b",)], ("name",))
    saved = json.loads((tmp_path / "t.json").read_text())
    stamp = saved["provenance"]
    assert saved["rows"][0]["run"] == "legacy" and saved["rows"][1]["run"] == stamp["run"] != "legacy"
    assert set(stamp["earlier_runs"]) == {"legacy"}  # a kept row: its run's code is checked too
    assert stamp["earlier_runs"]["legacy"]["definitions"]["skfg/metrics.py"] == definition_hashes(
        REPO / "skfg" / "metrics.py")
    assert stale_results(tmp_path) == {}
    monkeypatch.setattr(ledger_stamp, "_RUN_ID", "a later run")
    rows = ledger_stamp.mergeable_rows("t")
    ledger_stamp.write_results("t", {"rows": [{"name": "a"}, rows[1]]}, [("a",), ("b",)], ("name",))
    second = json.loads((tmp_path / "t.json").read_text())["provenance"]
    assert set(second["earlier_runs"]) == {stamp["run"]}  # the legacy rows are all gone, and so is their run
    # a kept run's stamp stays as recorded
    saved = json.loads((tmp_path / "t.json").read_text())
    monkeypatch.setattr(ledger_stamp, "_RUN_ID", "a third run")
    rows = ledger_stamp.mergeable_rows("t")
    ledger_stamp.write_results("t", {"rows": [rows[0], {"name": "b"}]}, [("a",), ("b",)], ("name",))
    third = json.loads((tmp_path / "t.json").read_text())["provenance"]
    kept = {k: v for k, v in saved["provenance"].items() if k != "earlier_runs"}
    assert third["earlier_runs"] == {"a later run": kept}
    assert stale_results(tmp_path) == {}


def test_rows_kept_under_another_key_keep_their_runs_provenance(tmp_path, monkeypatch):

    monkeypatch.setattr(ledger_stamp, "RESULTS", tmp_path)
    monkeypatch.setattr(ledger_stamp, "_MERGED", {})
    monkeypatch.setattr(ledger_stamp, "_RUN_ID", "the fitting run")
    ledger_stamp.write_results("t", {"results": [{"name": "a"}], "cost": 1.0}, [("a",)], ("name",), rows_key="results")
    first = json.loads((tmp_path / "t.json").read_text())
    assert first["results"][0]["run"] == "the fitting run"
    monkeypatch.setattr(ledger_stamp, "_RUN_ID", "a timing run")
    kept = ledger_stamp.mergeable_rows("t", key="results")
    ledger_stamp.write_results("t", {"results": kept, "cost": 2.0}, [("a",)], ("name",), rows_key="results")
    second = json.loads((tmp_path / "t.json").read_text())
    assert second["cost"] == 2.0 and second["results"][0]["run"] == "the fitting run"
    assert set(second["provenance"]["earlier_runs"]) == {"the fitting run"}
    with pytest.raises(KeyError):
        ledger_stamp.mergeable_rows("t")  # no "rows" in this file


def test_alternating_ms_times_every_predictor_per_batch_and_round():
    import time as _time

    from _common import alternating_ms, speedup_spread

    calls = []

    def slow(x):
        calls.append(("slow", len(x)))
        _time.sleep(0.004 * len(x))

    def fast(x):
        calls.append(("fast", len(x)))
        _time.sleep(0.001 * len(x))

    X = list(range(6))
    times = alternating_ms([slow, fast], X, 2, per_round=True, batch=3)
    assert times.shape == (2, 2, 2)  # rounds, predictors, batches
    assert calls[:2] == [("slow", 3), ("fast", 3)]  # one untimed call each first
    assert calls[2:] == [("slow", 3), ("fast", 3)] * 4  # then alternating, batch by batch
    assert (times[:, 0] >= 4).all() and (times[:, 1] >= 1).all()  # ms per item, not per call
    speedup, low, high = speedup_spread(times)
    assert low <= high and 2 < speedup < 4.5 and 2 < low
    assert alternating_ms([slow, fast], X, 2).shape == (2,)  # best per image, image by image


def test_ratio_over_rounds_is_the_median_of_the_per_round_ratios_with_their_range():
    from _common import ratio_over_rounds, speedup_spread

    base, other = [10.0, 12.0, 30.0], [5.0, 4.0, 10.0]  # a slow third round hits both
    speedup, low, high = ratio_over_rounds(base, other)
    assert speedup == pytest.approx(3.0)  # rounds: 2, 3, 3 (the ratio of the medians, 2.4, is not one of them)
    assert (low, high) == (pytest.approx(2.0), pytest.approx(3.0))
    same = ratio_over_rounds([1.0, 1.1, 0.9], [1.05, 1.0, 0.95])  # noise: the range holds 1
    assert same[1] < 1 < same[2]
    with pytest.raises(ValueError, match="one time a round"):
        ratio_over_rounds([1.0, 2.0], [1.0])
    # per-image times of two predictors over 3 rounds: the headline lies in the range
    times = np.array([[[4.0, 4.0], [2.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]], [[6.0, 6.0], [2.0, 2.0]]])
    assert speedup_spread(times) == (pytest.approx(2.0), pytest.approx(1.0), pytest.approx(3.0))


def test_paired_by_seed_pairs_only_the_seeds_both_ran():
    from _common import paired_by_seed

    base = [{"seed": s, "val_accuracy": 0.5, "test_accuracy": 0.6 + 0.01 * s} for s in (0, 1, 2)]
    rows = [{"seed": s, "val_accuracy": 0.5, "test_accuracy": 0.63 + 0.01 * s} for s in (1, 2, 3)]
    p = paired_by_seed(rows, base)
    assert p["seeds"] == [1, 2] and p["test_per_seed"] == pytest.approx([0.03, 0.03])
    assert p["test_mean"] == pytest.approx(0.03) and p["test_half_width"] == pytest.approx(0.0)
    assert p["val_mean"] == 0.0 and p["val_half_width"] == 0.0  # identical: an interval of width 0 around 0
    assert paired_by_seed(rows[:1], base) is None  # one common seed: no interval


sys.path.insert(0, str(REPO / "docs" / "_ext"))
from ledger.docs import markdown_tables, result_value, sync_readme  # noqa: E402


def test_the_readme_numbers_are_those_of_the_results():
    assert sync_readme(check=True) == [], "run: python benchmarks/ledger docs --sync"


def test_the_numbers_the_rst_sources_show_are_those_of_the_results(tmp_path):
    from ledger.docs import split_role, sync_docs

    assert sync_docs(check=True) == [], "run: python benchmarks/ledger docs --sync"
    assert split_role("74.6 % <recipe:a.b|pct>") == ("74.6 %", "recipe:a.b|pct")
    assert split_role("recipe:a.b|pct") == (None, "recipe:a.b|pct")
    (tmp_path / "r.json").write_text(json.dumps({"a": 0.5}))
    page = tmp_path / "p.rst"
    page.write_text("reaches :result:`r:a|pct` and :result:`49.0 % <r:a|pct>`; ``:result:`r:a|pct``` stays.\n")
    assert sync_docs([page], check=True, results_dir=tmp_path) == [("p.rst", "r:a|pct", None, "50.0 %"),
                                                                   ("p.rst", "r:a|pct", "49.0 %", "50.0 %")]
    sync_docs([page], results_dir=tmp_path)
    assert page.read_text() == ("reaches :result:`50.0 % <r:a|pct>` and :result:`50.0 % <r:a|pct>`; "
                                "``:result:`r:a|pct``` stays.\n")


def test_result_specs_read_numbers_and_tables(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"rows": [{"name": "a", "seed": 0, "acc": 0.7431},
                                                          {"name": "a", "seed": 1, "acc": 0.5},
                                                          {"name": "lr_0.003", "seed": 0, "acc": 0.25},
                                                          {"name": "x, PQ 16 B", "seed": 2, "acc": 0.125}],
                                                 "summary": {"speedup": 2.449}}))
    assert result_value("r:rows[name=a,seed=1].acc|pct", tmp_path) == "50.0 %"
    assert result_value("r:rows[0].acc|f3", tmp_path) == "0.743"
    assert result_value("r:rows[name=lr_0.003].acc|f3", tmp_path) == "0.250"  # a dot inside a selector
    assert result_value("r:summary.speedup|x", tmp_path) == "2.45x"
    assert result_value('r:rows[name="x, PQ 16 B",seed=2].acc|f3', tmp_path) == "0.125"  # a quoted comma
    assert result_value("r:rows[0].acc / rows[1].acc|x", tmp_path) == "1.49x"
    for bad in ("r:rows[name=b].acc", "r:summary.missing", "missing:x", "r:summary.speedup|pc"):
        with pytest.raises(KeyError):
            result_value(bad, tmp_path)
    (tmp_path / "r.md").write_text("# r\n\nMeasured at commit abc, today.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                                   "text\n\n| c |\n|---|\n| 3 |\n")
    assert markdown_tables("r", tmp_path) == ("Measured at commit abc, today.", [[["a", "b"], ["1", "2"]],
                                                                               [["c"], ["3"]]])
    readme = tmp_path / "README.md"
    readme.write_text("reaches <!-- result r:rows[0].acc|pct -->70.0 %<!-- /result --> today\n")
    assert sync_readme(readme, check=True, results_dir=tmp_path) == [("r:rows[0].acc|pct", "70.0 %", "74.3 %")]
    sync_readme(readme, results_dir=tmp_path)
    assert "-->74.3 %<!--" in readme.read_text() and sync_readme(readme, check=True, results_dir=tmp_path) == []


def test_the_sweep_plans_headline_files_first_and_resumes_a_file_of_several_runs(tmp_path, monkeypatch):

    module, results = _stamped_repo(tmp_path)
    r = json.loads((results / "r.json").read_text())
    for name, extra in (("recipe", {}), ("a_quick", {}), ("multi", {"earlier_runs": {
            "2026-11-30 08:00:00 UTC pid 2": {"command": "python -c 'print(1)'", "run": "2026-11-30 08:00:00 UTC pid 2",
                                              "date": "2026-11-30 08:10 UTC", "definitions": r["provenance"]["definitions"],
                                                  "hashing": HASHING}}})):
        (results / f"{name}.json").write_text(json.dumps({"acc": 0.5, "provenance": {**r["provenance"], **extra}}))
    assert sweep.plan(results_dir=results, repo=tmp_path, state={}) == []  # all fresh
    module.write_text(module.read_text().replace("return 1", "return 4"))
    todo = sweep.plan(results_dir=results, repo=tmp_path, state={})
    assert [name for name, _ in todo] == ["recipe", "multi", "r", "a_quick"]  # headline, full runs, quick ones
    assert dict(todo)["multi"] == [("python -c 'print(1)'", 10.0), ("python benchmarks/r.py", 30.0)]
    # run the first of multi's two commands, then stop (a failing second one): the state counts it off
    monkeypatch.setattr(sweep, "STATE", tmp_path / "sweep_state.json")
    monkeypatch.setattr(sweep, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(sweep, "REPO", tmp_path)
    commands = [("python -c 'open(\"first\", \"w\")'", 1.0), ("python -c 'raise SystemExit(3)'", 1.0)]
    assert sweep.run("multi", commands) == 1
    assert (tmp_path / "first").exists() and "exit 3" not in (tmp_path / "logs" / "multi.log").read_text()
    state = json.loads((tmp_path / "sweep_state.json").read_text())
    assert state == {"multi": {"commands": [list(c) for c in commands], "done": 1}}
    assert dict(sweep.plan(results_dir=results, repo=tmp_path, state=state))["multi"] == [tuple(commands[1])]
    # a budget too small for a command starts nothing
    assert sweep.run("r", [("python -c 'open(\"second\", \"w\")'", 30.0)], budget_s=60,
                     started=__import__("time").monotonic()) == 0
    assert not (tmp_path / "second").exists()
    assert status.order(["x_quick", "scale", "recipe", "b"]) == ["recipe", "scale", "b", "x_quick"]


def test_a_file_part_way_whose_rows_ran_changed_code_starts_again_from_its_first_command(tmp_path, monkeypatch):

    module, results = _stamped_repo(tmp_path)
    (results / "partial").mkdir()
    os.replace(results / "r.json", results / "partial" / "multi.json")  # the rows of its first command
    (results / "partial" / "multi.md").write_text("rows")
    for attr, value in (("RESULTS", results), ("PARTIAL", results / "partial"),
                        ("STATE", results / "sweep_state.json")):
        monkeypatch.setattr(sweep, attr, value)
    commands = [["python benchmarks/r.py", 1.0], ["python benchmarks/r.py --merge", 1.0]]
    state = {"multi": {"commands": commands, "done": 1}}
    (results / "sweep_state.json").write_text(json.dumps(state))
    assert sweep.plan(results_dir=results, repo=tmp_path, state=state) == [("multi", [tuple(commands[1])])]
    assert sweep.restart_stale_parts(tmp_path) == [] and (results / "partial" / "multi.json").is_file()
    module.write_text(module.read_text().replace("return 1", "return 4"))  # code its rows ran
    assert sweep.stale_parts(state, results, tmp_path) == ["multi"]
    assert sweep.plan(results_dir=results, repo=tmp_path, state=state) == [("multi", [tuple(c) for c in commands])]
    assert sweep.restart_stale_parts(tmp_path) == ["multi"]
    assert not list((results / "partial").iterdir())
    assert json.loads((results / "sweep_state.json").read_text())["multi"]["done"] == 0


def test_a_file_filled_over_several_runs_replaces_the_committed_one_only_after_its_last_command(tmp_path,
                                                                                               monkeypatch):
    """Between the commands of a file re-run over several, the committed file (the one the
    docs quote) stays in results/ and the grown one waits in results/partial/; each
    command finds the grown one where it reads (--merge), and the last one's file replaces
    the committed one. A run cut short is undone at the next start."""

    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    for attr, value in (("RESULTS", results), ("PARTIAL", results / "partial"),
                        ("STATE", results / "sweep_state.json"),
                        ("LOGS", tmp_path / "logs"), ("REPO", tmp_path)):
        monkeypatch.setattr(sweep, attr, value)
    (tmp_path / "fake.py").write_text(  # a benchmark: writes its row, after the file's rows with --merge
        "import json, pathlib, sys\n"
        "p = pathlib.Path('benchmarks/results/m.json')\n"
        "rows = json.loads(p.read_text())['rows'] if '--merge' in sys.argv else []\n"
        "p.write_text(json.dumps({'rows': rows + [sys.argv[1]]}))\n"
        "p.with_suffix('.md').write_text(' '.join(rows + [sys.argv[1]]))\n")
    committed = json.dumps({"rows": ["old"]})
    (results / "m.json").write_text(committed)
    (results / "m.md").write_text("old")
    rows = lambda path: json.loads(path.read_text())["rows"]  # noqa: E731
    commands = [("python fake.py a", 0.01), ("python fake.py b --merge", 0.01), ("python fake.py c --merge", 30.0)]
    # two of the three commands, then the budget stops it: the committed file is untouched
    assert sweep.run("m", commands, budget_s=60, started=__import__("time").monotonic()) == 2
    assert (results / "m.json").read_text() == committed and (results / "m.md").read_text() == "old"
    assert rows(results / "partial" / "m.json") == ["a", "b"] and (results / "partial" / "m.md").read_text() == "a b"
    assert sorted(p.name for p in (results / "partial").iterdir()) == ["m.json", "m.md"]
    assert json.loads((results / "sweep_state.json").read_text())["m"]["done"] == 2
    assert "- m: 2 of 3 commands done, next `python fake.py c --merge`" in status.render(results, tmp_path)[0]
    # a run cut short while the grown file stood in results/: undone at the next start
    sweep._before("m", 2)
    assert rows(results / "m.json") == ["a", "b"]
    assert sweep.recover() == ["m"] and (results / "m.json").read_text() == committed
    assert not list((results / "partial").glob("*.committed*"))
    # a failing command leaves both files as they were
    assert sweep.run("m", [("python -c 'raise SystemExit(2)'", 0.01)]) == 0
    assert (results / "m.json").read_text() == committed and rows(results / "partial" / "m.json") == ["a", "b"]
    # the last command: its file (every row) replaces the committed one, partial/ and the state are cleared
    assert sweep.run("m", [commands[2]]) == 1
    assert rows(results / "m.json") == ["a", "b", "c"] and (results / "m.md").read_text() == "a b c"
    assert not (results / "partial").exists() and not (results / "sweep_state.json").exists()


def test_the_sweep_reuses_rows_another_fresh_file_measured_and_never_undoes_a_running_sweep(tmp_path,
                                                                                            monkeypatch):
    """A command whose rows a fresh file already holds from the same run is not measured
    again: ``sweep.py --reuse`` writes them, with that run's stamp, for the next command to
    merge into; a stale source, a missing row or rows of two runs are refused. recipe's
    re-run (:data:`sweep.REPLAN`) starts that way. A second sweep (or a dry run) while one
    runs leaves its swapped files alone."""

    module, results = _stamped_repo(tmp_path)
    source = json.loads((results / "r.json").read_text())
    first, later = source["provenance"]["run"], "2026-12-02 09:00:00 UTC pid 2"
    source["provenance"] = {**source["provenance"], "run": later, "command": "python benchmarks/r.py --merge",
                            "earlier_runs": {first: dict(source["provenance"])}}
    source["rows"] = [{"name": "a", "seed": 0, "acc": 0.5, "run": first},
                      {"name": "a", "seed": 1, "acc": 0.75, "run": first},
                      {"name": "b", "seed": 0, "acc": 0.25, "run": later}]
    (results / "r.json").write_text(json.dumps(source))
    kept = sweep.reuse("r", ["a"], "t", results_dir=results, repo=tmp_path)
    written = json.loads((results / "t.json").read_text())
    assert [r["acc"] for r in kept] == [0.5, 0.75] and written["rows"] == kept
    assert written["provenance"] == source["provenance"]["earlier_runs"][first]  # the run that measured them
    assert written["reused_from"] == "r" and (results / "t.md").is_file()
    for bad, rows in (("no rows named c", ["c"]), ("come from 2 runs", ["a", "b"])):
        with pytest.raises(ValueError, match=bad):
            sweep.reuse("r", rows, "t", results_dir=results, repo=tmp_path)
    module.write_text(module.read_text().replace("return 1", "return 4"))  # the code the rows ran changed
    with pytest.raises(ValueError, match="r.json is stale"):
        sweep.reuse("r", ["a"], "t", results_dir=results, repo=tmp_path)
    # recipe's re-run: recipe_headline's rows first, default_adamw (now the default) left out
    assert sweep.REPLAN["recipe"][0] == ("python benchmarks/ledger sweep --reuse recipe_headline "
                                         "--rows recipe_default --into recipe")
    assert not any("default_adamw" in c for c in sweep.REPLAN["recipe"])
    for commands in sweep.REPLAN.values():  # every planned row exists in its script
        for command in commands:
            argv = command.split()
            if "--rows" in argv and argv[1] != "benchmarks/ledger":
                script = importlib.import_module(Path(argv[1]).stem)
                rows = getattr(script, "ROWS", None) or getattr(script, "CANDIDATES")
                assert set(argv[argv.index("--rows") + 1].split(",")) <= set(rows), command
    # another sweep running: its committed copies in partial/ are not "a run cut short"
    for attr, value in (("RESULTS", results), ("PARTIAL", results / "partial"), ("LOGS", tmp_path / "logs"),
                        ("LOCK", tmp_path / "logs" / "sweep.pid"), ("STATE", results / "sweep_state.json")):
        monkeypatch.setattr(sweep, attr, value)
    (results / "partial").mkdir()
    (results / "partial" / "r.committed.json").write_text("{}")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "sweep.pid").write_text(str(os.getppid()))  # a live process
    monkeypatch.setattr(sweep, "plan", lambda only=None: [])
    assert sweep.main(["--dry-run"]) == 0
    with pytest.raises(SystemExit):
        sweep.main([])
    assert (results / "partial" / "r.committed.json").is_file()


def test_a_resumed_benchmark_run_reuses_its_parts_only_on_the_same_code_and_keeps_their_trace(tmp_path,
                                                                                               monkeypatch, capsys):
    """``ledger.parts.Parts`` (imprinting.py --e2e, elope.py, distillation.py): the parts an
    earlier process finished come back, with the skfg code they ran added to this process's
    trace (the stamp covers every part); parts from other settings are refused, parts whose
    skfg code has changed since are not reused; a run that does not resume never loads a
    file it did not write."""
    import skfg.softmax  # noqa: F401 - the module whose code the part ran

    softmax = ledger_stamp.REPO / "skfg" / "softmax.py"
    ran = (str(softmax), "SoftmaxClassifier.__init__")
    earlier = Tracer()
    earlier.add([ran])
    monkeypatch.setattr(_parts, "TRACER", earlier)
    first = _parts.Parts(tmp_path, {"epochs": 3}, resume=False)
    first.put("base", [0.5, 1])
    first.dump("model", {"weights": [1, 2]})
    saved = json.loads((tmp_path / "parts.json").read_text())
    assert "SoftmaxClassifier.__init__" in saved["definitions"]["skfg/softmax.py"]  # hashed as a stamp hashes it
    later = Tracer()  # a new process
    monkeypatch.setattr(_parts, "TRACER", later)
    again = _parts.Parts(tmp_path, {"epochs": 3}, resume=True)
    assert again.get("base") == [0.5, 1] and again.load("model") == {"weights": [1, 2]}
    assert later.codes() == {ran}
    assert later.executed([softmax]) == {softmax: {"SoftmaxClassifier.__init__"}}
    fresh = _parts.Parts(tmp_path, {"epochs": 3}, resume=False)  # a new run: nothing of the old one
    assert fresh.get("base") is None and fresh.load("model") is None and (tmp_path / "model.joblib").is_file()
    first.put("base", 1)
    with pytest.raises(SystemExit, match="other epochs"):
        _parts.Parts(tmp_path, {"epochs": 4}, resume=True)
    # the code a part ran changed since it was kept: not reused (the run starts afresh), saying which
    saved = json.loads((tmp_path / "parts.json").read_text())
    saved["definitions"]["skfg/softmax.py"]["SoftmaxClassifier.__init__"] = "0" * 40
    (tmp_path / "parts.json").write_text(json.dumps(saved))
    assert _parts.Parts(tmp_path, {"epochs": 3}, resume=True).get("base") is None
    assert "skfg/softmax.py:SoftmaxClassifier.__init__" in capsys.readouterr().out
    # a cache (distillation.py's teachers) is taken only on unchanged code and settings
    assert _parts.Parts(tmp_path, {"epochs": 3}, resume=True, cache=True).get("base") is None  # code changed
    _parts.Parts(tmp_path, {"epochs": 3}, resume=False).put("base", 1)
    assert _parts.Parts(tmp_path, {"epochs": 3}, resume=True, cache=True).get("base") == 1
    assert _parts.Parts(tmp_path, {"epochs": 4}, resume=True, cache=True).get("base") is None  # other settings
    # settings compare as they are kept (JSON: a tuple comes back a list)
    _parts.Parts(tmp_path, {"scale": (0.25, 0.8)}, resume=False).put("base", 2)
    assert _parts.Parts(tmp_path, {"scale": (0.25, 0.8)}, resume=True).get("base") == 2
    assert _parts.Parts(tmp_path, {"scale": (0.25, 0.8)}, resume=True, cache=True).get("base") == 2


def test_a_stamp_records_the_benchmark_code_the_libraries_and_the_data(tmp_path):

    stamp = provenance()
    import _common  # noqa: F401 - a measuring script imports it: hashed; the ledger is not
    stamp = provenance()
    assert "benchmarks/_common.py" in stamp["scripts"]
    assert all(Path(f).parent == Path("benchmarks") for f in stamp["scripts"])
    assert stamp["versions"]["python"] and stamp["versions"]["torch"] and stamp["versions"]["scikit-learn"]
    assert set(stamp["versions"]) >= {"torchvision", "numpy", "scipy", "faiss-cpu", "onnxruntime"}
    assert stamp["data"] == ledger_stamp.data_manifests()  # the data sets' manifest hashes
    if ledger_stamp.DATA.is_dir():
        assert "stanford_cars_a" in stamp["data"]
    data = tmp_path / "data"
    (data / "cars" / "a").mkdir(parents=True)
    (data / "cars" / "a" / "1.jpg").write_bytes(b"xx")
    first = ledger_stamp.data_manifests(data)
    assert set(first) == {"cars"}
    (data / "cars" / "a" / "1.jpg").write_bytes(b"xxx")  # a changed file
    assert ledger_stamp.data_manifests(data) != first
    # a change to the benchmark's own code makes its results stale
    (tmp_path / "repo").mkdir()
    module, results = _stamped_repo(tmp_path / "repo")
    script = tmp_path / "repo" / "benchmarks" / "r.py"
    script.write_text("print(1)\n")
    r = json.loads((results / "r.json").read_text())
    r["provenance"]["scripts"] = {"benchmarks/r.py": code_hash(script)}
    (results / "r.json").write_text(json.dumps(r))
    assert stale_results(results, tmp_path / "repo") == {}
    script.write_text("print(2)\n")
    assert stale_results(results, tmp_path / "repo") == {"r.json": ["benchmarks/r.py (benchmark code)"]}


def test_every_results_markdown_is_the_rendering_of_its_json():

    for path in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        saved = json.loads(path.read_text())
        if "markdown" not in saved:  # written before the table was kept in the JSON
            continue
        table = saved["markdown"]
        expected = ledger_stamp.render_markdown(path.stem, saved["provenance"], table["rows"], table["header"],
                                           table["notes"])
        assert path.with_suffix(".md").read_text() == expected, f"{path.with_suffix('.md').name} was edited by hand"


def test_the_markdown_check_catches_a_hand_edit(tmp_path, monkeypatch):

    monkeypatch.setattr(ledger_stamp, "RESULTS", tmp_path)
    ledger_stamp.write_results("t", {"rows": [{"acc": 0.5}]}, [["a", 0.5]], ["name", "acc"], notes="A note.")
    saved = json.loads((tmp_path / "t.json").read_text())
    md = (tmp_path / "t.md").read_text()
    table = saved["markdown"]
    assert md == ledger_stamp.render_markdown("t", saved["provenance"], table["rows"], table["header"], table["notes"])
    assert "| a    | 0.5 |" in md and md.endswith("A note.\n")
    edited = md.replace("0.5", "0.6")
    assert edited != ledger_stamp.render_markdown("t", saved["provenance"], table["rows"], table["header"], table["notes"])


def test_a_result_keeps_the_headline_values_of_its_earlier_runs(tmp_path, monkeypatch):

    monkeypatch.setattr(ledger_stamp, "RESULTS", tmp_path)
    monkeypatch.setattr(ledger_stamp, "provenance", lambda: {"commit": f"c{len(list(tmp_path.glob('*.json')))}",
                                                        "uncommitted_changes": False, "date": "today"})
    ledger_stamp.write_results("t", {"rows": []}, [], ["a"], headline={"speed-up": 2.0})
    ledger_stamp.write_results("t", {"rows": []}, [], ["a"], headline={"speed-up": 2.5})
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["headline"] == {"speed-up": 2.5}
    assert saved["history"] == [{"commit": "c0", "date": "today", "values": {"speed-up": 2.0}}]
    ledger_stamp.write_results("t", {"rows": []}, [], ["a"], headline={"speed-up": 3.0})
    saved = json.loads((tmp_path / "t.json").read_text())
    assert [h["values"]["speed-up"] for h in saved["history"]] == [2.5, 2.0]


def test_the_docs_set_a_headline_beside_its_earlier_runs_where_they_spread_wider(tmp_path, monkeypatch):
    from ledger.docs import result_nodes, run_spread, spread_note

    monkeypatch.setattr(ledger_stamp, "RESULTS", tmp_path)
    monkeypatch.setattr(ledger_stamp, "provenance", lambda: {"commit": "abcdef123", "uncommitted_changes": False,
                                                        "date": "today", "definitions": {}, "hashing": HASHING})
    ledger_stamp.write_results("t", {"rows": []}, [], ["a"], headline={"speed-up": 2.0, "same": 1.0})
    assert run_spread("t", tmp_path) is None  # one run: nothing to set beside it
    ledger_stamp.write_results("t", {"rows": []}, [], ["a"], headline={"speed-up": 2.5, "same": 1.0},
                          headline_ranges={"speed-up": [2.4, 2.6], "same": [0.9, 1.1]})
    text = run_spread("t", tmp_path)
    assert text == ("Across runs: speed-up: 2.5 in this run (its range 2.4-2.6); earlier runs 2 (abcdef1, today).")
    # beside the number itself: a spec reading that headline's value (here or in a row) gets the mark
    data = json.loads((tmp_path / "t.json").read_text())
    (tmp_path / "t.json").write_text(json.dumps(dict(data, rows=[{"name": "fast", "speedup": 2.5}])))
    note = "speed-up: 2.5 in this run (its range 2.4-2.6); earlier runs 2 (abcdef1, today)"
    assert spread_note("t:headline.speed-up|x", tmp_path) == note
    assert spread_note("t:rows[name=fast].speedup|x", tmp_path) == note
    assert spread_note("t:headline.same|x", tmp_path) is None  # the same in every run
    assert spread_note("t:headline.speed-up / headline.same|x", tmp_path) is None
    pytest.importorskip("docutils")
    marks = [n.astext() for n in result_nodes("t:rows[name=fast].speedup|x", tmp_path, tmp_path)]
    assert marks == ["2.50x", "runs"]
    readme = tmp_path / "README.md"
    readme.write_text("<!-- result t:headline.speed-up|x -->2.50x<!-- /result -->\n")
    sync_readme(readme, results_dir=tmp_path, repo=tmp_path)
    mark = f'<sup>[runs](benchmarks/results/t.md "{note}")</sup>'
    assert readme.read_text() == f"<!-- result t:headline.speed-up|x -->2.50x{mark}<!-- /result -->\n"
    assert sync_readme(readme, check=True, results_dir=tmp_path, repo=tmp_path) == []  # the mark is not the number
    from ledger.docs import _MARK, readme_mark

    stale = readme_mark("measured at abc, before changes to skfg/m.py:<module> (run x)")  # a note may hold "<"
    assert _MARK.sub("", "2.50x" + stale + mark) == "2.50x"
    # inside this run's own range: no note
    ledger_stamp.write_results("t", {"rows": []}, [], ["a"], headline={"speed-up": 2.5, "same": 1.0},
                          headline_ranges={"speed-up": [1.9, 2.6], "same": [0.9, 1.1]})
    assert run_spread("t", tmp_path) is None
