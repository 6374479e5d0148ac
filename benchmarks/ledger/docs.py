"""Numbers and tables in the docs, taken from ``benchmarks/results/`` (issue 19).

In the Sphinx pages:

- ``:result:`74.6 % <recipe:summary.recipe_default.test_mean|pct>``` renders one number of
  ``benchmarks/results/recipe.json`` (``|pct``: ``74.3 %``; ``|pts``: ``2.2`` points; ``|spts``: ``+1.5``;
  ``|f3``: ``0.743``; ``|f1``: ``36.7``; ``|x``: ``2.45x``; ``|e1``: ``2.5e-06``; no
  format: as stored; ``"file:a.b / c.d|x"``: the ratio of two values). A path
  step ``rows[name=lite2,seed=0]`` picks the first list item whose fields match
  (a value holding a comma is quoted: ``rows[method="a, b"]``), ``rows[0]`` the first item.
  The number before the spec is what the raw ``.rst`` shows where it is browsed;
  ``python benchmarks/ledger docs --sync`` rewrites it from the results (and the
  README's), ``--check`` lists those out of date (``tests/test_results.py`` runs it); the
  built page always renders the value from the JSON. ``:result:`SPEC``` alone works too.
- ``.. results-table:: recipe`` renders the Markdown table(s) of
  ``benchmarks/results/recipe.md`` with the commit and date that measured them
  (``:table: 1`` for the second table only).

In ``README.md`` (plain Markdown, no Sphinx), a number between
``<!-- result SPEC -->`` and ``<!-- /result -->`` is rewritten from the results by
``python benchmarks/ledger docs --sync`` (``--check`` fails when one is out of date;
``tests/test_results.py`` runs it).

Every measured number in ``README.md`` and ``docs/*.rst`` comes from a result spec
(:func:`unsourced_numbers` finds the others; ``tests/test_results.py`` runs it on every
page): a number followed by a unit (%, points, x, ms, s, min, img/s, MB, GB, GiB, recall),
or a range of two (``7-26 points``), must be
a ``:result:`` (README: ``<!-- result -->``), a quotation of a paper marked with its
source, ``:paper:`68.9 % <elope Table 4>``` (README: ``<!-- paper elope Table 4
-->68.9 %<!-- /paper -->``), a setting, target or convention that no run measured,
``:given:`95 %``` (README: ``<!-- given -->95 %<!-- /given -->``), or an API constant
in a code literal (````min(4, cpu_count)````).

A number from a *stale* result (measured before a change to the code it ran;
``python benchmarks/ledger status``) is marked: a superscript "stale" beside it whose note says
"measured at <commit> (<date>), before changes to <names>" (in the HTML docs on hover,
in the README as the link's title, and in ``benchmarks/results/STATUS.md``). Being
stale fails no check: the sweep re-runs it (``python benchmarks/ledger sweep``).
"""

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
_NOTES = {}  # (results folder, repo) -> {result name: stale note}


def stale_note(name, results_dir=RESULTS, repo=REPO):
    """The note of a stale result file (``"measured at ..., before changes to ..."``), or
    None when the file is fresh or unstamped."""
    key = (str(results_dir), str(repo))
    if key not in _NOTES:
        from .status import stale_notes

        _NOTES[key] = stale_notes(Path(results_dir), Path(repo))
    return _NOTES[key].get(name)


def _file_of(spec):
    return spec.strip().partition("|")[0].partition(":")[0]

FORMATS = {
    None: lambda v: str(v),
    "pct": lambda v: f"{100 * v:.1f} %",
    "pts": lambda v: f"{100 * v:.1f}",
    "spts": lambda v: f"{100 * v:+.1f}",  # a signed difference, in points
    "f3": lambda v: f"{v:.3f}",
    "f2": lambda v: f"{v:.2f}",
    "f1": lambda v: f"{v:.1f}",
    "x": lambda v: f"{v:.2f}x",
    "int": lambda v: f"{int(round(v))}",
    "e1": lambda v: f"{v:.1e}",
}
_STEP = re.compile(r"^([^\[\]]+)(?:\[([^\]]+)\])?$")
_CONDITION = re.compile(r'(\w+)=("[^"]*"|[^,]*)')


def _convert(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def result_value(spec, results_dir=RESULTS):
    """The value ``spec`` (``"file:path.to[key=v].value|format"``) names, formatted;
    ``"file:path.a / path.b|x"`` is the ratio of two values of the file.

    Raises ``KeyError`` naming the spec and the step that does not exist."""
    spec = spec.strip()
    path, _, fmt = spec.partition("|")
    name, _, steps = path.partition(":")
    file = Path(results_dir) / f"{name}.json"
    if not file.is_file():
        raise KeyError(f"{spec!r}: no results file {file.name}")
    data = json.loads(file.read_text())
    values = [_lookup(data, part.strip(), spec, name) for part in steps.split(" / ")]
    value = values[0] if len(values) == 1 else values[0] / values[1]
    if fmt not in FORMATS and (fmt or None) not in FORMATS:
        raise KeyError(f"{spec!r}: unknown format {fmt!r}; known: {', '.join(f for f in FORMATS if f)}")
    return FORMATS[fmt or None](value)


def _lookup(value, steps, spec, name):
    for step in re.split(r"\.(?![^\[]*\])", steps):  # a dot inside [name=lr_0.003] is no step
        m = _STEP.match(step)
        if m is None:
            raise KeyError(f"{spec!r}: cannot read the step {step!r}")
        key, select = m.groups()
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"{spec!r}: no {key!r} in {name}.json")
        value = value[key]
        if select and select.isdigit():
            value = value[int(select)]
        elif select:
            # key=value pairs split at commas; a value with commas is quoted: method="a, b"
            conditions = {k: v[1:-1] if v.startswith('"') else v for k, v in _CONDITION.findall(select)}
            matches = [v for v in value if all(str(v.get(k)) == c or v.get(k) == _convert(c)
                                               for k, c in conditions.items())]
            if not matches:
                raise KeyError(f"{spec!r}: no item of {key!r} with {select}")
            value = matches[0]
    return value


def markdown_tables(name, results_dir=RESULTS):
    """``(measured line, [table rows as lists of cells])`` of ``results/<name>.md``."""
    text = (Path(results_dir) / f"{name}.md").read_text()
    measured = next((line for line in text.splitlines() if line.startswith("Measured at")), "")
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue  # the separator under the header
            if current is None:
                current = []
                tables.append(current)
            current.append(cells)
        else:
            current = None
    return measured, tables


def _fmt(value):
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def headline_spreads(name, results_dir=RESULTS):
    """``{headline label: sentence}`` for each headline value of ``results/<name>.json`` whose
    earlier runs (``history``: commit, date, values) spread wider than this run's own range
    (``headline_ranges``: ``{label: [low, high]}``; without one, wherever the runs differ by
    more than 1 %): the value, its range and the earlier runs' values."""
    data = json.loads((Path(results_dir) / f"{name}.json").read_text())
    headline, history = data.get("headline") or {}, data.get("history") or []
    ranges = data.get("headline_ranges") or {}
    out = {}
    for label, value in headline.items():
        earlier = [(h.get("commit", "")[:7], h.get("date", ""), h["values"][label]) for h in history
                   if isinstance(h.get("values", {}).get(label), (int, float))]
        if not earlier or not isinstance(value, (int, float)):
            continue
        values = [v for *_, v in earlier] + [value]
        low, high = ranges.get(label, (value, value))
        wider = min(values) < low or max(values) > high
        if label not in ranges:
            wider = max(values) - min(values) > 0.01 * max(abs(v) for v in values)
        if wider:
            runs = ", ".join(f"{_fmt(v)} ({c}, {d})" for c, d, v in earlier)
            out[label] = (f"{label}: {_fmt(value)} in this run"
                          + (f" (its range {_fmt(low)}-{_fmt(high)})" if label in ranges else "")
                          + f"; earlier runs {runs}")
    return out


def run_spread(name, results_dir=RESULTS):
    """A sentence setting each headline value of ``results/<name>.json`` beside its earlier
    runs' where they spread wider than this run's own range (:func:`headline_spreads`);
    None when no headline does."""
    parts = list(headline_spreads(name, results_dir).values())
    return "Across runs: " + "; ".join(parts) + "." if parts else None


def spread_note(spec, results_dir=RESULTS):
    """The across-runs sentence (:func:`headline_spreads`) of the headline value a spec
    shows, or None: a spec shows a headline when the value it reads is one of its file's
    headline values (a ratio of two values never is)."""
    path = spec.strip().partition("|")[0]
    name, _, steps = path.partition(":")
    file = Path(results_dir) / f"{name}.json"
    if " / " in steps or not file.is_file():
        return None
    data = json.loads(file.read_text())
    value = _lookup(data, steps.strip(), spec, name)
    spreads = headline_spreads(name, results_dir)
    return next((spreads[k] for k, v in (data.get("headline") or {}).items() if k in spreads and v == value), None)


_README = re.compile(r"<!-- result (?P<spec>[^>]+?) -->(?P<value>.*?)<!-- /result -->", re.S)

UNITS = r"(?:\s?%|\s?(?:points?|pts)\b|x\b|\s?×|\s?ms\b|\s?s\b|\s?min\b|\s?minutes\b|\s?img/s\b|\s?images/s\b" \
        r"|\s?[KMG]i?B\b|\s?kB\b|\s?recall\b)"
_VALUE = r"[+\-−±~]?\d[\d,]*(?:\.\d+)?"
# a number and its unit, or a range of two ("7-26 points", "12–16 minutes", "3.5 to 4 ms"),
# which is measured as much as either end
_NUMBER = re.compile(r"(?<![\w.:/-])" + _VALUE + r"(?:\s?[-–]\s?|\s(?:to|and)\s)?" + r"(?:" + _VALUE + r")?" + UNITS)
_SOURCED = [
    re.compile(r":(?:result|given):`[^`]*`"),  # the roles
    re.compile(r":paper:`[^`<]*<[^`<>]*\w[^`<>]*>`"),  # a paper's number only with its source
    re.compile(r"<!-- (result|given)\b[^>]*-->.*?<!-- /\1 -->", re.S),  # their README forms
    re.compile(r"<!-- paper (?!-->)[^>]*\w[^>]*-->.*?<!-- /paper -->", re.S),
    re.compile(r"``[^`]*``|`[^`\n]*`"),  # code literals (RST and Markdown)
    re.compile(r"```.*?```", re.S),  # Markdown code blocks
    re.compile(r"::[ \t]*\n(?:[ \t]*\n)*(?:(?:[ \t]+[^\n]*)?\n)+"),  # RST literal blocks
    re.compile(r"^\.\. [\w-]+::.*$", re.M),  # directive lines
]


def unsourced_numbers(text):
    """The measured-looking numbers of a page (a number or a range of two followed by a unit) that are not
    a result spec, a marked paper quotation or setting, or code: ``[(line, number)]``."""
    text = re.sub(r":paper:`([^`<]*)`", r"\1", text)  # a paper role without its source backs nothing
    for pattern in _SOURCED:
        text = pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)  # keep the line numbers
    return [(text.count("\n", 0, m.start()) + 1, m.group(0).strip()) for m in _NUMBER.finditer(text)]
_MARK = re.compile(r"(?:<sup>\[(?:stale|runs)\].*?</sup>)+$", re.S)  # a note may hold "<module>"
STATUS_LINK = "benchmarks/results/STATUS.md"


def readme_mark(note):
    """The README's mark of a stale number: a superscript link to STATUS.md, titled with the note."""
    return f'<sup>[stale]({STATUS_LINK} "{note}")</sup>'


def readme_runs_mark(name, note):
    """The README's mark of a headline whose earlier runs spread wider than its own range: a
    superscript link to its results table, titled with the :func:`spread_note`."""
    return f'<sup>[runs](benchmarks/results/{name}.md "{note}")</sup>'


_ROLE = re.compile(r":result:`(?P<body>[^`]*)`")
_LITERAL = re.compile(r"(``.+?``(?!`))", re.S)  # an inline literal, which may hold backticks


def split_role(text):
    """``(shown number or None, spec)`` of a ``:result:`` role's text: ``"74.6 % <spec>"`` or ``"spec"``."""
    m = re.match(r"^(?P<shown>.*?)\s*<(?P<spec>[^<>]+)>$", text.strip(), re.S)
    return (m.group("shown"), m.group("spec")) if m else (None, text.strip())


def sync_docs(paths=None, check=False, results_dir=RESULTS):
    """Rewrite (or with ``check``, list) the numbers shown in the ``:result:`` roles of the
    docs' ``.rst`` files that differ from the results: ``[(file, spec, shown, from results)]``.
    Roles inside code literals (examples of the syntax) are left alone."""
    paths = sorted((REPO / "docs").glob("*.rst")) if paths is None else paths
    out = []
    for path in paths:
        text = Path(path).read_text()
        parts = _LITERAL.split(text)

        def fill(m):
            shown, spec = split_role(m.group("body"))
            value = result_value(spec, results_dir)
            if shown != value:
                out.append((Path(path).name, spec, shown, value))
            return f":result:`{value} <{spec}>`"

        new = "".join(part if i % 2 else _ROLE.sub(fill, part) for i, part in enumerate(parts))
        if not check and new != text:
            Path(path).write_text(new)
    return out


def sync_readme(path=REPO / "README.md", check=False, results_dir=RESULTS, repo=REPO):
    """Rewrite (or with ``check``, list) the README numbers that differ from the results:
    ``[(spec, written, from results)]``. Rewriting also sets each number's stale mark;
    the check compares the numbers only (a stale result fails nothing)."""
    text = Path(path).read_text()
    stale = []

    def fill(m):
        value = result_value(m.group("spec"), results_dir)
        written = _MARK.sub("", m.group("value"))
        if written != value:
            stale.append((m.group("spec"), written, value))
        if check:
            return m.group(0)
        note = stale_note(_file_of(m.group("spec")), results_dir, repo)
        runs = spread_note(m.group("spec"), results_dir)
        marks = readme_mark(note) if note else ""
        marks += readme_runs_mark(_file_of(m.group("spec")), runs) if runs else ""
        return f"<!-- result {m.group('spec')} -->{value}{marks}<!-- /result -->"

    new = _README.sub(fill, text)
    if not check and new != text:
        Path(path).write_text(new)
    return stale


def result_nodes(spec, results_dir=RESULTS, repo=REPO):
    """The docutils nodes of a ``:result:`` role: the number from the results; where its
    file is stale, a visible superscript "stale" whose hover text is the :func:`stale_note`;
    where it is a headline whose earlier runs spread wider than this run's range, a
    superscript "runs" whose hover text sets it beside them (:func:`spread_note`)."""
    from docutils import nodes

    out = [nodes.Text(result_value(spec, results_dir))]
    for label, note, kind in (("stale", stale_note(_file_of(spec), results_dir, repo), "stale-result"),
                              ("runs", spread_note(spec, results_dir), "across-runs")):
        if note:
            mark = nodes.superscript()
            mark += nodes.abbreviation(label, label, explanation=note, classes=[kind])
            out.append(mark)
    return out


def setup(app):  # pragma: no cover - exercised by the docs build
    from docutils import nodes
    from docutils.parsers.rst import Directive, directives

    def result_role(name, rawtext, text, lineno, inliner, options=None, content=None):
        try:
            _, spec = split_role(text)  # the number shown in the source is for reading it raw
            return result_nodes(spec), []
        except KeyError as err:
            msg = inliner.reporter.error(str(err), line=lineno)
            return [inliner.problematic(rawtext, rawtext, msg)], [msg]

    class ResultsTable(Directive):
        required_arguments = 1
        option_spec = {"table": directives.nonnegative_int}

        def run(self):
            measured, tables = markdown_tables(self.arguments[0])
            if "table" in self.options:
                tables = tables[self.options["table"] : self.options["table"] + 1]
            out = []
            for rows in tables:
                width = max(len(r) for r in rows)
                table = nodes.table()
                group = nodes.tgroup(cols=width)
                table += group
                group.extend(nodes.colspec(colwidth=1) for _ in range(width))
                for part, part_rows in ((nodes.thead(), rows[:1]), (nodes.tbody(), rows[1:])):
                    for cells in part_rows:
                        row = nodes.row()
                        for cell in cells + [""] * (width - len(cells)):
                            entry = nodes.entry()
                            entry += nodes.paragraph(text=cell)
                            row += entry
                        part += row
                    group += part
                out.append(table)
            source = f"benchmarks/results/{self.arguments[0]}.md"
            out.append(nodes.paragraph(text=f"{measured} Source: {source}." if measured else f"Source: {source}."))
            spread = run_spread(self.arguments[0])
            if spread:  # the runs disagree more than one run's rounds: say so beside the table
                out.append(nodes.paragraph(text=spread, classes=["run-spread"]))
            note = stale_note(self.arguments[0])
            if note:
                out.append(nodes.paragraph(text=f"Stale: {note} (benchmarks/results/STATUS.md).",
                                           classes=["stale-result"]))
            return out

    def paper_role(name, rawtext, text, lineno, inliner, options=None, content=None):
        # :paper:`68.9 % <elope Table 4>`: the number, with its source on hover
        m = re.match(r"^(.*?)\s*<([^>]+)>$", text, re.S)
        value, source = (m.group(1), m.group(2)) if m else (text, None)
        if not source:
            msg = inliner.reporter.error(f":paper: needs its source: :paper:`{text} <paper Table N>`", line=lineno)
            return [inliner.problematic(rawtext, rawtext, msg)], [msg]
        return [nodes.abbreviation(value, value, explanation=f"quoted from {source}")], []

    def given_role(name, rawtext, text, lineno, inliner, options=None, content=None):
        return [nodes.Text(text)], []  # a setting, target or convention: shown as written

    app.add_role("result", result_role)
    app.add_role("paper", paper_role)
    app.add_role("given", given_role)
    app.add_directive("results-table", ResultsTable)
    return {"parallel_read_safe": True}


def main(argv=None):
    """``python benchmarks/ledger docs --sync``: rewrite the numbers the README and the
    ``.rst`` sources show from the results; ``--check``: list those out of date (exit 1)."""
    argv = sys.argv[1:] if argv is None else argv
    if not {"--readme", "--sync", "--check"} & set(argv):
        sys.exit("usage: python benchmarks/ledger docs --sync | --check   (README.md and docs/*.rst)")
    check = "--check" in argv
    found = [("README.md", *row) for row in sync_readme(check=check)] + sync_docs(check=check)
    for file, spec, old, new in found:
        print(f"{file} {spec}: {old!r} -> {new!r}")
    return 1 if found and check else 0
