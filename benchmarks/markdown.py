"""``## `` section merging of the generated markdown reports: the benchmarks share docs/benchmarks.md (and other
pages), and each script rewrites only its own sections."""

from __future__ import annotations


def markdown_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``text`` split at its ``## `` headings: the part before the first, and (heading, section) pairs."""
    head, sections = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            sections.append([line.strip(), line])
        elif sections:
            sections[-1][1] += line
        else:
            head.append(line)
    return "".join(head), [(h, s) for h, s in sections]


def replace_markdown_sections(text: str, new: str) -> str:
    """``text`` with each ``## `` section of ``new`` put in place of the section of the same heading, or
    appended when ``text`` has none; everything else in ``text`` is kept as it is."""
    head, sections = markdown_sections(text)
    replacements = dict(markdown_sections(new)[1])
    out = [replacements.pop(h, s) for h, s in sections] + list(replacements.values())
    blank_line = [s if s.endswith("\n\n") else s.rstrip("\n") + "\n\n" for s in out[:-1]]  # before each heading
    return head + "".join(blank_line + out[-1:])


def keep_other_markdown_sections(old: str, new: str) -> str:
    """``new`` (a whole generated page) plus the ``## `` sections of ``old`` whose headings ``new`` lacks,
    appended: a report that rewrites a file keeps the sections other scripts wrote into it."""
    own = {h for h, _ in markdown_sections(new)[1]}
    extra = "".join(s for h, s in markdown_sections(old)[1] if h not in own)
    return replace_markdown_sections(new, extra)
