"""The README stays the short front page of the documentation (issue 17): what the project is, the two set-up
commands, links. The site itself (links, anchors, nav, docstrings) is checked by `bash .ci/docs` in CI."""
from __future__ import annotations

import re

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
SETUP_COMMANDS = ("bash .ci/fml run fraud --preset quick", "bash .ci/run ")


def test_readme_is_short_and_keeps_the_two_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200, "README.md grew past 200 lines: move the text to the page it documents"
    setup = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, re.S)[0].splitlines()
    assert [line.split("#")[0].strip() for line in commands] == [c.strip() for c in SETUP_COMMANDS]


def test_readme_links_to_pages_that_exist():
    links = re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", README.read_text())
    assert len(links) >= 8, links
    assert [link for link in links if not (REPO_ROOT / link).is_file()] == []
