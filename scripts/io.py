"""Writing results: atomic file writes and output files named after the case id."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from monai.data import NibabelWriter

from scripts.data.layouts import case_id_from_path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary name beside ``path`` to write to; on success it is renamed to ``path``, on any
    error it is removed, so ``path`` is either the complete new file or left as it was.

    The temporary name keeps the extension (``.nii.gz`` included) so writers that choose the format from
    it still work.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    ext = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes through :func:`atomic_path`, so a killed job or a failing case never
    leaves a half-written NIfTI behind."""

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


def case_name_formatter(metadict: dict, saver) -> dict:
    """``SaveImage`` name formatter: the output is named after the case id (modality suffix removed), so
    ``BraTS20_Validation_001_t1.nii.gz`` gives ``BraTS20_Validation_001.nii.gz``."""
    source = (metadict or {}).get("filename_or_obj", getattr(saver, "_data_index", 0))
    if isinstance(source, (list, tuple)):
        source = source[0]
    return {"subject": case_id_from_path(source), "idx": None}


def _markdown_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
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
    head, sections = _markdown_sections(text)
    replacements = dict(_markdown_sections(new)[1])
    out = [replacements.pop(h, s) for h, s in sections]
    for s in replacements.values():
        if out and not out[-1].endswith("\n\n"):
            out[-1] = out[-1].rstrip("\n") + "\n\n"
        out.append(s)
    return head + "".join(out)


def keep_other_markdown_sections(old: str, new: str) -> str:
    """``new`` (a whole generated page) plus the ``## `` sections of ``old`` whose headings ``new`` lacks,
    appended: a report that rewrites a file keeps the sections other scripts wrote into it."""
    own = {h for h, _ in _markdown_sections(new)[1]}
    extra = "".join(s for h, s in _markdown_sections(old)[1] if h not in own)
    return replace_markdown_sections(new, extra)
