"""The site's pages, for mkdocs-gen-files (run by `mkdocs build -f .ci/mkdocs.yml`, see .ci/docs).

1. Every markdown page of the repository (tracked, or new and not ignored), at its own path: a README.md
   becomes its folder's index page, and relative links between pages work on GitHub and on the site alike.
2. One API reference page per Python module of the packages, rendered by mkdocstrings from the docstrings,
   with the literate-nav SUMMARY.md that lists them.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "pipelines", "verticals", "data_adapters")
NOT_PAGES = ("benchmarks/results/", ".ci/")  # generated data and CI files are not part of the site


def repository_files(pattern: str) -> list[str]:
    """Tracked files plus new ones git does not ignore, so a page shows up before its first commit."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", pattern],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return sorted({p for p in out.splitlines() if (ROOT / p).is_file()})


def copy_pages() -> None:
    for page in repository_files("*.md"):
        if page.startswith(NOT_PAGES):
            continue
        with mkdocs_gen_files.open(page, "w") as out:
            out.write((ROOT / page).read_text())
        mkdocs_gen_files.set_edit_path(page, page)


def reference_pages() -> None:
    nav = mkdocs_gen_files.Nav()
    for source in repository_files("*.py"):
        path = Path(source)
        if path.parts[0] not in PACKAGES:
            continue
        parts = path.with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        elif parts[-1].startswith("_"):
            continue
        page = Path("reference", *parts).with_suffix(".md")
        nav[parts] = page.relative_to("reference").as_posix()
        with mkdocs_gen_files.open(page, "w") as out:
            out.write(f"::: {'.'.join(parts)}\n")
        mkdocs_gen_files.set_edit_path(page, source)
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as out:
        out.writelines(nav.build_literate_nav())


def main() -> None:
    copy_pages()
    reference_pages()


main()  # mkdocs-gen-files runs this file with runpy on every build (and on every rebuild of `serve`)
