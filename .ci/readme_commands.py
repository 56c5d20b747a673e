"""Print a command block of the README, the one source of truth for how seqwarm is installed and tested.

The README marks the blocks CI runs with an HTML comment on the line before the fence:

    <!-- ci:install -->
    ```bash
    ...
    ```

`python3 .ci/readme_commands.py install` prints that block's lines. `.ci/run` evaluates them as written, so what a
newcomer copies and what CI runs cannot drift (issue 27); tests/test_readme_ci.py checks the same.
Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(name: str, text: str | None = None) -> str:
    """The body of the fenced block after `<!-- ci:NAME -->`; exactly one such block must exist and be non-empty."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    marker = f"<!-- ci:{name} -->"
    starts = [i for i, line in enumerate(lines) if line.strip() == marker]
    if len(starts) != 1:
        raise SystemExit(f"README.md: expected one '{marker}' line before a ```bash block, found {len(starts)}")
    i = starts[0] + 1
    if i >= len(lines) or not lines[i].startswith("```"):
        raise SystemExit(f"README.md: '{marker}' must be followed directly by a ```bash fence")
    body: list[str] = []
    for line in lines[i + 1 :]:
        if line.startswith("```"):
            break
        # .ci/run runs a block line by line: a continued line is joined into the one command it is.
        if body and body[-1].endswith("\\"):
            body[-1] = body[-1][:-1] + line.lstrip()
        else:
            body.append(line)
    else:
        raise SystemExit(f"README.md: the block after '{marker}' is never closed")
    if not any(line.strip() and not line.lstrip().startswith("#") for line in body):
        raise SystemExit(f"README.md: the block after '{marker}' has no command")
    return "\n".join(body) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python3 .ci/readme_commands.py install|test")
    sys.stdout.write(readme_block(sys.argv[1]))
