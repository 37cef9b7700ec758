"""The documentation holds together: docs/cli.md is what the commands declare (else: run make
docs), every relative link of README.md and docs/ reaches a file and heading that exist, every
docs page is linked from README, and every page or heading a help text or the code names exists.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path


from helpers import REPO, help_texts

CLI_MD = REPO / "docs" / "cli.md"


def doc_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", REPO / "scripts" / "gen-cli-docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- (a) the generated CLI reference ----------------------------------------------------------------
def test_cli_reference_is_what_the_commands_declare():
    rendered = _generator().render()
    current = CLI_MD.read_text(encoding="utf-8") if CLI_MD.is_file() else ""
    if current != rendered:
        diff = "".join(list(difflib.unified_diff(current.splitlines(True), rendered.splitlines(True),
                                                 "docs/cli.md", "rendered now", n=1))[:40])
        raise AssertionError(f"docs/cli.md is stale: run make docs\n{diff}")


def test_cli_reference_is_machine_free():
    text = CLI_MD.read_text(encoding="utf-8")
    assert str(REPO) not in text and str(Path.home()) not in text
    assert "## incseg train-step" in text and "- `--method <" in text  # every command, every option


# -- (b) links -------------------------------------------------------------------------------------
def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(page: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            base = slug(line.lstrip("#"))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def headings(page: Path) -> list[str]:
    fenced, found = False, []
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip().replace("`", ""))
    return found


def _check_target(target: str, page: Path) -> str | None:
    """None if ``target`` (a relative link, maybe with #anchor) exists seen from ``page``."""
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    if REPO.resolve() not in [resolved, *resolved.parents]:
        return f"{target} leaves the repository"
    if not resolved.exists():
        return f"{target}: no such file"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"{target}: {resolved.relative_to(REPO.resolve())} has no heading #{anchor}"
    return None


def links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8")))


def test_every_relative_link_reaches_a_file_and_heading():
    bad, checked = [], 0
    for page in doc_pages():
        for target in links(page):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            checked += 1
            problem = _check_target(target, page)
            if problem:
                bad.append(f"{page.relative_to(REPO)}: {problem}")
    assert checked > 50
    assert not bad, "\n".join(bad)


def test_readme_links_every_docs_page():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in links(REPO / "README.md")}
    pages = {p.resolve() for p in (REPO / "docs").rglob("*.md")}
    assert pages and not pages - linked, f"README's 'Where to go next' misses {sorted(map(str, pages - linked))}"
    assert (REPO / "README.md").stat().st_size < 15_000, "README is the door: move details to docs/"


# -- (c) references in help texts and code ---------------------------------------------------------------
# docs/PAGE.md, docs/PAGE.md#anchor or docs/FOLDER/, ended before any trailing punctuation
DOCS_REFERENCE = re.compile(r"(?<![\w/.-])docs/[\w./-]*[\w/](?:#[\w-]+)?")
# README: "A heading" or README: A heading, ended by . , ; ) ] or the end of the text
README_REFERENCE = re.compile(r'README: (?:"([^"]+)"|([^.,;)\]"]+))')


def _reference_problems(where: str, text: str) -> list[str]:
    bad = []
    for target in DOCS_REFERENCE.findall(text):
        problem = _check_target(target, REPO / "README.md")
        if problem:
            bad.append(f"{where}: {problem}")
    for quoted, plain in README_REFERENCE.findall(text):
        target = (quoted or plain).strip()
        # a heading, or the name a titled heading starts with ("ALIFE" of "ALIFE: adaptive ...")
        if not any(h == target or h.startswith(f"{target}:") for h in headings(REPO / "README.md")):
            bad.append(f"{where}: README has no heading {target!r}")
    return bad


def test_help_names_only_pages_and_headings_that_exist():
    bad, found = [], 0
    for where, text in help_texts().items():
        text = " ".join(text.split())
        if text.count("README") != len(README_REFERENCE.findall(text)):
            bad.append(f"{where}: write README references as `README: Heading` ({text!r})")
        found += len(DOCS_REFERENCE.findall(text))
        bad += _reference_problems(where, text)
    assert found >= 10, "the help texts no longer point to docs/ at all"
    assert not bad, "\n".join(bad)


# The README section a comment cites: README "Heading", README, "Heading" or README: Heading
README_SECTION = re.compile(r'README[,:]? "|README: [A-Z]')


def test_code_names_only_pages_that_exist():
    """Comments and scripts cite docs pages (README is the door, not the manual)."""
    files = [*(REPO / "incseg_cli").rglob("*.py"), *(REPO / "bench").glob("*.py"), *(REPO / "scripts").rglob("*"),
             REPO / "Makefile"]
    bad = []
    for path in files:
        if not path.is_file() or path.suffix in (".pyc", ".json"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        where = str(path.relative_to(REPO))
        if README_SECTION.search(text):
            bad.append(f"{where}: cites a README section; README sections moved to docs/ ({README_SECTION.search(text).group()!r})")
        bad += _reference_problems(where, " ".join(text.split()))
    assert not bad, "\n".join(bad)
