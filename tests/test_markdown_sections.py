"""Benchmark reports share docs/benchmarks.md: each script rewrites only its own sections."""

from benchmarks.markdown import keep_other_markdown_sections, replace_markdown_sections

PAGE = "# Benchmarks\n\nintro\n\n## A\n\na1\n\n## B\n\nb1\n"


def test_replacing_a_section_keeps_everything_else_and_a_blank_line_before_the_next_heading():
    assert replace_markdown_sections(PAGE, "## A\n\na2\n") == "# Benchmarks\n\nintro\n\n## A\n\na2\n\n## B\n\nb1\n"


def test_a_new_section_is_appended():
    assert replace_markdown_sections(PAGE, "## C\n\nc\n") == PAGE + "\n## C\n\nc\n"


def test_a_regenerated_page_keeps_the_sections_it_does_not_write():
    old = "# Old title\n\n## A\n\nold a\n\n## Other script\n\nkept\n"
    assert keep_other_markdown_sections(old, PAGE) == PAGE + "\n## Other script\n\nkept\n"
    assert keep_other_markdown_sections("", PAGE) == PAGE
