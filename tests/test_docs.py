"""The documentation holds together: relative links resolve, anchors name headings, the README stays short and
its test command is the one CI runs (.ci/run). Plain text parsing; no TensorFlow."""

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 150
PAGES = sorted([ROOT / "README.md", ROOT / "BUILD.md", ROOT / "BENCHMARKS.md", ROOT / "benchmarks" / "README.md",
                *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the text may hold one level of brackets or backticks.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+).+?\1")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            marker = match.group(1)
            fenced = None if fenced == marker else (fenced or marker)
            continue
        if fenced is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text, lowercase, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch for ch in text if ch in "-_ " or unicodedata.category(ch)[0] in "LNM")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2, ... for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative link of a page, outside code."""
    found = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1)
            if not EXTERNAL.match(target):
                found.append((number, target))
    return found


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with a page's relative links, one line each."""
    problems = []
    for number, target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading with that anchor in {resolved.name}")
    return problems


def test_pages_found():
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    assert {"README.md", "BUILD.md", "BENCHMARKS.md", "docs/evaluate.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    problems = broken(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_short():
    count = len(ROOT.joinpath("README.md").read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines; move detail to docs/"


def test_readme_test_command_is_ci_command():
    ci = [line.strip() for line in ROOT.joinpath(".ci/run").read_text(encoding="utf-8").splitlines()
          if "pytest" in line and not line.lstrip().startswith("#")]
    assert len(ci) == 1, ci
    readme = [line.strip() for line in ROOT.joinpath("README.md").read_text(encoding="utf-8").splitlines()]
    assert ci[0] in readme, f"README.md lacks CI's command line: {ci[0]}"


def test_checker_catches_what_it_should(tmp_path):
    """The checks themselves: a missing file, a wrong anchor, links in code ignored, GitHub's slugs."""
    (tmp_path / "target.md").write_text("# Top\n## Side by side (`a/b.py`), 2×2!\n## Twice\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](target.md#side-by-side-abpy-22) [ok](target.md#twice-1) [self](#here)\n"
                    "# Here\n[gone](missing.md) [bad](target.md#nowhere) `[code](missing.md)` [web](https://x.y/z)\n"
                    "```\n[fenced](missing.md)\n# not a heading\n```\n")
    assert slug("Side by side (`a/b.py`), 2×2!") == "side-by-side-abpy-22"
    assert [problem.split(": ", 1)[1] for problem in broken(page, tmp_path)] == [
        "missing.md: no such file",
        "target.md#nowhere: no heading with that anchor in target.md",
    ]
