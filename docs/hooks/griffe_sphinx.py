"""Griffe extension: render the reST habits of our docstrings as Markdown (mkdocstrings renders Markdown).

Only the API reference changes; the sources stay as they are. Three conversions:

- Sphinx roles, ``:func:`name```, ``:class:`~mod.Name```, ... -> ``name`` as inline code (no link: a
  role's target is often relative to its module, and an unresolvable link would fail the strict build);
- ``#:`` comments above (or after) a module or class attribute -> that attribute's docstring, as Sphinx
  autodoc reads them (e.g. the constants of ``genmetrics.stats.defaults``);
- reST "simple" tables (rows between ``=====  =====`` rules) -> Markdown pipe tables (e.g. the file
  layout in ``genmetrics.registry.refstats``);
- doctest lines (``>>>`` / ``...``) at the start of a line outside an ``Examples:`` section (which the
  Google parser handles itself) -> a fenced code block instead of a nested quote.
"""
from __future__ import annotations

import ast
import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`~?([^`]+)`")
_RULE = re.compile(r"^( *)(=+)( +=+)+ *$")


def _roles(text: str) -> str:
    return _ROLE.sub(lambda m: f"`{m.group(1)}`", text)


def _columns(rule: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]


def _split(line: str, cols: list[tuple[int, int]]) -> list[str]:
    cells = []
    for i, (start, _) in enumerate(cols):
        end = cols[i + 1][0] if i + 1 < len(cols) else len(line)
        cells.append(line[start:end].strip().replace("|", "\\|"))
    return cells


def _tables(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _RULE.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        # A table: rule, header, rule, rows..., rule.
        cols = _columns(lines[i])
        rules = [j for j in range(i, len(lines)) if _RULE.match(lines[j])]
        if len(rules) < 3 or rules[1] != i + 2:
            out.append(lines[i])
            i += 1
            continue
        end = rules[2]
        header = _split(lines[i + 1], cols)
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(cols))
        for row in lines[i + 3:end]:
            if row.strip():
                out.append("| " + " | ".join(_split(row, cols)) + " |")
        i = end + 1
    return "\n".join(out)


def _doctests(text: str) -> str:
    out: list[str] = []
    in_block = False
    for line in text.split("\n"):
        is_doctest = line.startswith(">>>") or (in_block and line.startswith("..."))
        if is_doctest and not in_block:
            out += ["", "```pycon"]
        elif in_block and not is_doctest:
            out += ["```", ""]
        in_block = is_doctest
        out.append(line)
    if in_block:
        out.append("```")
    return "\n".join(out)


def _hash_colon_comment(lines: list[str], lineno: int) -> str | None:
    """The ``#:`` lines right above line `lineno` (1-based), or a trailing ``#:`` on that line."""
    text = []
    j = lineno - 2
    while j >= 0 and lines[j].lstrip().startswith("#:"):
        text.insert(0, lines[j].lstrip()[2:].strip())
        j -= 1
    if not text and "#:" in lines[lineno - 1]:
        text.append(lines[lineno - 1].split("#:", 1)[1].strip())
    return " ".join(text) if text else None


class SphinxDocstrings(griffe.Extension):
    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _doctests(_tables(_roles(obj.docstring.value)))

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        if attr.docstring is not None or not isinstance(node, (ast.Assign, ast.AnnAssign)):
            return
        code = getattr(agent, "code", None)
        if not code:
            return
        comment = _hash_colon_comment(code.split("\n"), node.lineno)
        if comment:
            attr.docstring = griffe.Docstring(_roles(comment), lineno=node.lineno, parent=attr)
