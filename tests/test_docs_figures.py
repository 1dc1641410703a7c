"""Every figure quoted in the docs has one home, the page that measured it (issue 20 item 9).

A *figure* is a number with a unit, as a measurement prints it: a ratio (``2.46x``), a rate (``35.6 img/s``),
a size (``6.7 GB``), a duration (``125 s``), a percentage (``0.74 %``) or a number in scientific notation
(``3.3e-6``, a tolerance such as ``1e-6``). The pages are README.md, docs/*.md and the docstrings of stats/,
registry/ and plugin/, which the API reference renders. A figure written on more than one page is allowed
only when one of those pages is its home and every other page links to the home in each section that quotes
it (in Markdown: the text between two headings, code blocks included; a docstring is one section and names
the home as ``docs/<page>.md``). So a figure is measured once and quoted with a pointer to where it was
measured; a new measurement is one edit, and a stale copy cannot survive elsewhere. Figures of settings and
definitions (a default timeout, a size limit) are not measurements: `NOT_MEASURED` lists them per page.
"""
import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("stats", "registry", "plugin")

_NUM = r"\d+(?:[.,]\d+)?"
_RANGE = rf"{_NUM}(?:\s?[-–]\s?{_NUM})?"
_START = r"(?<![\w.])"
PATTERNS = {
    "ratio": rf"{_START}{_RANGE}[x×](?!\w)",
    "rate": rf"{_START}{_RANGE}\s?(?:img|images)/s\b",
    "size": rf"{_START}{_RANGE}\s?(?:GB|MB|GiB|MiB)\b",
    "duration": rf"{_START}{_RANGE}\s?(?:s|ms|min)\b(?!/)",
    "percent": rf"{_START}{_RANGE}\s?%",
    "scientific": rf"{_START}{_NUM}e-\d+\b",
}
# In docstrings a power of ten (1e-6) is an algorithm's constant (a jitter, an eps), not a quoted measurement.
_POWER_OF_TEN = re.compile(r"1e-\d+")

# Figure -> the pages where it is a setting or a definition, not a measurement (excluded there only).
NOT_MEASURED = {
    "0.5s": {"logging.md", "plugin/spool.py"},                      # GENMETRICS_LOG_BACKOFF, 1 s after doubling
    "1s": {"logging.md", "plugin/spool.py"},
    "5s": {"logging.md"},                                           # GENMETRICS_REPLAY_INTERVAL
    "30s": {"logging.md", "stats/download.py"},                     # GENMETRICS_LOG_TIMEOUT, download rate window
    "3600s": {"stats/download.py"},                                 # GENMETRICS_DOWNLOAD_DEADLINE
    "30min": {"environment.md", "stats/streaming/distributed.py"},  # gloo's default process-group timeout
    "3s": {"distributed.md"},                                       # GENMETRICS_DIST_TIMEOUT in an example message
    "4GiB": {"deferred.md", "environment.md", "plugin/samples.py", "stats/download.py"},  # size limits' defaults
    "256MiB": {"deferred.md", "plugin/samples.py"},                 # COMPRESSIBLE_BYTES
    "64x": {"deferred.md", "plugin/samples.py"},                    # MAX_COMPRESSION_RATIO
    "1e-3": {"inception.md", "lightning.md"},                       # BatchNorm eps; the example's learning rate
    "2x": {"stats/networks/lpips.py", "stats/images/resize_pil.py"},   # the map 2x - 1; a 2x downscale
}


def normalise(figure):
    """One spelling per figure: no spaces, ``x`` for ``×``, ``-`` for an en dash."""
    return re.sub(r"\s", "", figure).replace("×", "x").replace("–", "-")


def figures(text, docstring=False):
    """The normalised figures in `text`."""
    found = set()
    for kind, pattern in PATTERNS.items():
        for match in re.finditer(pattern, text):
            figure = normalise(match.group())
            if not (docstring and kind == "scientific" and _POWER_OF_TEN.fullmatch(figure)):
                found.add(figure)
    return found


def markdown_sections(text):
    """The sections of a Markdown page: the text between two headings (a ``#`` inside a code block is none)."""
    sections, current, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6} ", line):
            sections.append("\n".join(current))
            current = []
        current.append(line)
    return sections + ["\n".join(current)]


def markdown_links(section, page):
    """The pages a Markdown section links to, by file name (a link to an anchor of its own page counts)."""
    targets = re.findall(r"\]\(([^)\s]*)\)", section)
    return {page if target.startswith("#") else Path(target.split("#")[0]).name for target in targets}


def docstrings(path):
    """The docstrings of a module, its classes and its functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [tree] + [node for node in ast.walk(tree)
                      if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return [text for text in map(ast.get_docstring, nodes) if text]


def quotes():
    """(figure, page) -> the pages linked from each section of that page that quotes the figure."""
    found = defaultdict(list)
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    for path in pages:
        for section in markdown_sections(path.read_text(encoding="utf-8")):
            for figure in figures(section):
                found[figure, path.name].append(markdown_links(section, path.name))
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            page = path.relative_to(ROOT).as_posix()
            for text in docstrings(path):
                for figure in figures(text, docstring=True):
                    found[figure, page].append(set(re.findall(r"docs/(\w+\.md)", text)))
    return found


def unhomed(found):
    """Figures quoted on several pages with no page that all the others' quoting sections link to."""
    pages = defaultdict(dict)
    for (figure, page), links in found.items():
        if page not in NOT_MEASURED.get(figure, ()):
            pages[figure][page] = links
    problems = {}
    for figure, quoted in pages.items():
        homes = [home for home in quoted
                 if all(home in links for page, sections in quoted.items() if page != home for links in sections)]
        if len(quoted) > 1 and not homes:
            problems[figure] = sorted(quoted)
    return problems


@pytest.fixture(scope="module")
def found():
    """Every figure of every page, read once for the tests of this module."""
    return quotes()


def test_every_repeated_figure_links_to_its_home(found):
    problems = unhomed(found)
    assert not problems, (
        "these figures are quoted on several pages without a link to one home (the page that measured them): "
        f"{problems}. Keep the number on its home page and, elsewhere, state the claim without it or link to "
        "the home in the same section; a setting or definition goes into NOT_MEASURED.")


def test_every_exception_is_still_quoted_where_it_is_listed(found):
    stale = sorted((figure, page) for figure, pages in NOT_MEASURED.items() for page in pages
                   if (figure, page) not in found)
    assert not stale, f"NOT_MEASURED lists figures no longer on these pages; remove them: {stale}"


def test_the_rule_catches_a_copy_and_accepts_a_linked_quote():
    home = "# Speed\n\n| ours | peer | **2.46x** |\n"
    copy = "# Intro\n\nfast: 2.46× the peers.\n"
    linked = "# Intro\n\nfast: 2.46× the peers ([measured](docs/performance.md#speed)).\n"
    found = {}
    for name, text in (("performance.md", home), ("index.md", copy)):
        for section in markdown_sections(text):
            for figure in figures(section):
                found.setdefault((figure, name), []).append(markdown_links(section, name))
    assert unhomed(found) == {"2.46x": ["index.md", "performance.md"]}
    found["2.46x", "index.md"] = [markdown_links(markdown_sections(linked)[1], "index.md")]
    assert unhomed(found) == {}


def test_figures_are_read_as_written():
    text = "2.05–2.76× and 33.8 img/s, 6.7 GB in 125 s, FID by 0.74 % (3.3e-6); 3x3 pools, 299x299 px, 8 x 8"
    assert figures(text) == {"2.05-2.76x", "33.8img/s", "6.7GB", "125s", "0.74%", "3.3e-6"}
    assert figures("eps 1e-6, measured 7.6e-5", docstring=True) == {"7.6e-5"}
