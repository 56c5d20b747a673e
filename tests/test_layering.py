"""The layering rule of docs/ARCHITECTURE.md, checked on the package's source: no import cycles, analysis
never imports the trainer, only the CLI imports the command runners, and the model stands alone."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "seqwarm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the seqwarm modules it imports anywhere in its body (function-level imports included)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        # `from seqwarm import __version__` is an import of the package's __init__, not of a cycle
        graph[name] = {m for m in found if m in files and m not in (name, "seqwarm")}
    return graph


GRAPH = import_graph()


def test_there_are_no_import_cycles():
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(GRAPH[m]):
            if state.get(d) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(d) :], d]))
            if d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def test_analysis_never_imports_the_trainer():
    analysis = [
        m for m in GRAPH if any(part in m for part in ("report", "external_logs", "sweep", "tune", "eval", "saved"))
    ]
    assert len(analysis) > 10
    assert [m for m in analysis if GRAPH[m] & {"seqwarm.trainer", "seqwarm.lifecycle"}] == []


def test_only_the_cli_imports_the_command_runners():
    runners = {m for m in GRAPH if m.endswith(".runner")} | {"seqwarm.demo"}
    assert {"seqwarm.sweep.runner", "seqwarm.tune.runner", "seqwarm.eval.runner"} <= runners
    assert sorted(m for m, deps in GRAPH.items() if deps & runners) == ["seqwarm.cli"]


def test_the_model_stands_alone():
    assert GRAPH["seqwarm.model"] <= {"seqwarm.loss", "seqwarm.tokenizer"}
    assert GRAPH["seqwarm.loss"] <= {"seqwarm.tokenizer"}
