"""The README's code blocks, section by section, for the tests that run them as written."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def readme_blocks(section: str, language: str) -> list[str]:
    """The code blocks of one language (```bash, ```python) in a README section.

    `section` is the section's heading line (e.g. "## Serving"); the section runs
    to the next second-level heading.
    """
    text = (ROOT / "README.md").read_text()
    if section not in text:
        raise ValueError(f"expected a README section {section!r}, got no such heading")
    body = text[text.index(section) :]
    following = body.find("\n## ", len(section))
    body = body if following < 0 else body[:following]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)


def readme_commands(section: str) -> list[str]:
    """The shell commands of a section's bash blocks, one per line, without comments.

    A `source` line (activating the virtual environment) is skipped: the tests
    run the commands with the environment's own executables.
    """
    lines = []
    for block in readme_blocks(section, "bash"):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("source "):
                lines.append(line)
    return lines
