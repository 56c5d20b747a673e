"""The README is the one source of truth for set-up (issue 27): `.ci/run` runs its install block and test command as
written, the install gives every package the tests use, and a failing README line fails CI."""

import importlib.util
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = ROOT / ".ci" / "run"

spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
readme_commands = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_commands)


def commands(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_blocks_and_installs_nothing_of_its_own():
    ci = CI_RUN.read_text()
    assert "python3 .ci/readme_commands.py install" in ci and "python3 .ci/readme_commands.py test" in ci
    assert 'run_block "$install"' in ci and 'run_block "$test_command"' in ci
    code = [line for line in ci.splitlines() if not line.lstrip().startswith("#")]
    # A second install or test command in CI would let the README drift from what CI checks.
    assert not [line for line in code if re.search(r"\bpip install\b|\bpytest\b", line)], "CI installs or tests itself"


def test_the_readme_blocks_are_the_documented_commands():
    install = commands(readme_commands.readme_block("install"))
    assert install == [
        "python3 -m venv .venv && . .venv/bin/activate",
        "pip install torch==2.13.0 && pip install -e '.[test]'",
    ]
    assert commands(readme_commands.readme_block("test")) == ["python -m pytest"]
    # CONTRIBUTING's set-up and full lane are the README's, not another list of extras.
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    assert "pip install torch==2.13.0 && pip install -e '.[test]'" in contributing
    assert "| full | `python -m pytest` |" in contributing


def test_the_test_extra_brings_every_optional_package_the_tests_use():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def closure(name: str) -> set[str]:
        out = set()
        for req in extras[name]:
            m = re.fullmatch(r"seqwarm\[([\w,-]+)\]", req)
            if m:
                for sub in m.group(1).split(","):
                    out |= closure(sub)
            else:
                out.add(re.split(r"[<>=\[ ;]", req, maxsplit=1)[0].lower())
        return out

    installed = closure("test")
    # What the tests import or skip on, from their sources; lm-eval and deepspeed are deliberately left to skip.
    used = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        text = path.read_text()
        used |= set(re.findall(r"importorskip\(\"(\w+)", text)) | set(re.findall(r"find_spec\(\"(\w+)\"\)", text))
    optional = {"tensorboard", "transformers", "accelerate", "lightning", "wandb"}
    assert optional <= used, "the list of optional packages the tests use has changed: update this test"
    assert {"pytest", "pytest-timeout", "ruff"} | optional <= installed


@pytest.mark.parametrize("marker", ["install", "test"])
def test_a_missing_or_empty_block_stops_ci(marker):
    with pytest.raises(SystemExit, match=f"ci:{marker}"):
        readme_commands.readme_block(marker, "# seqwarm\n\nno blocks here\n")
    with pytest.raises(SystemExit, match="has no command"):
        readme_commands.readme_block(marker, f"<!-- ci:{marker} -->\n```bash\n# only a comment\n```\n")


def test_continued_lines_are_one_command():
    text = "<!-- ci:test -->\n```bash\npython -m pytest \\\n    -x\n```\n"
    assert commands(readme_commands.readme_block("test", text)) == ["python -m pytest -x"]


def test_a_failure_in_the_first_half_of_a_line_fails_ci(tmp_path):
    """`set -e` alone ignores `false && true`; .ci/run's run_block must not."""
    ci = CI_RUN.read_text()
    function = ci[ci.index("run_block() {") : ci.index("\n}\n", ci.index("run_block() {")) + 3]
    script = tmp_path / "s.sh"
    script.write_text("set -euo pipefail\n" + function + "run_block \"$(printf 'false && true\\necho after\\n')\"\n")
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "after" not in r.stdout and "README command failed: false && true" in r.stderr
    script.write_text("set -euo pipefail\n" + function + "run_block \"$(printf 'x=1 && true\\necho ok $x\\n')\"\n")
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok 1" in r.stdout


def test_readme_and_contributing_quote_the_same_test_times():
    def times(path):
        lines = [line for line in (ROOT / path).read_text().splitlines() if "Test times:" in line]
        assert len(lines) == 1, f"{path}: expected one 'Test times:' line"
        return lines[0][lines[0].index("Test times:") :]

    assert times("README.md") == times("CONTRIBUTING.md")
