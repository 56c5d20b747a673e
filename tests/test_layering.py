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
    # The two families (model.py: options, presets, GPT-2; llama.py) and what they share (layers.py: the
    # attention core with its instruments, the channels over the chunked loss); nothing of the run above them.
    assert GRAPH["seqwarm.model"] <= {"seqwarm.loss", "seqwarm.tokenizer", "seqwarm.layers", "seqwarm.llama"}
    assert GRAPH["seqwarm.llama"] <= {"seqwarm.layers"}
    assert GRAPH["seqwarm.layers"] <= {"seqwarm.loss", "seqwarm.instruments"}
    assert GRAPH["seqwarm.instruments"] == set()
    assert GRAPH["seqwarm.loss"] <= {"seqwarm.tokenizer"}


def _curriculum_values() -> set[str]:
    """The names of the curriculum's kinds and axis values, from the Literal types of its config section.

    `none`, `constant` and `linear` are left out: they are also ordinary words of other settings (an LR decay
    style is `linear` or `constant`), so they cannot be told apart by the string alone."""
    import typing

    from seqwarm.config import section_fields
    from seqwarm.curriculum import CurriculumConfig

    values = set()
    for tp in section_fields(CurriculumConfig).values():
        for arg in (tp, *typing.get_args(tp)):
            if typing.get_origin(arg) is typing.Literal:
                values |= set(typing.get_args(arg))
    return values - {"none", "constant", "linear"}


def _matched_names(tree: ast.AST, values: set[str], fields: set[str]) -> list[tuple[int, str]]:
    """Where a module matches a curriculum by its name: a kind or axis value compared with a curriculum field
    (`c.kind == "slw"`, `c["pacing"] in ("root", ...)`), or given to one (`kind="slw"`, `{"length": "slw"}`)."""

    def named(node: ast.AST) -> list[tuple[int, str]]:
        return [
            (n.lineno, n.value)
            for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in values
        ]

    def is_field(node: ast.AST) -> bool:  # c.kind, c["pacing"], length
        if isinstance(node, ast.Attribute):
            return node.attr in fields
        if isinstance(node, ast.Subscript):
            return isinstance(node.slice, ast.Constant) and node.slice.value in fields
        return isinstance(node, ast.Name) and node.id in fields

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(is_field(n) for n in (node.left, *node.comparators)):
            found += named(node)
        elif isinstance(node, ast.keyword) and node.arg in fields:
            found += named(node.value)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and str(key.value).split(".")[-1] in fields:
                    found += named(value)
    return found


def test_only_the_curriculum_package_names_a_curriculum_kind_or_axis_value():
    from seqwarm.config import section_fields
    from seqwarm.curriculum import CurriculumConfig

    values = _curriculum_values()
    assert {"slw", "shortformer", "bsz_warmup", "warmup", "truncate", "root", "discrete"} <= values
    fields = {"kind", "length", "batch", "packing", "window", "pacing"} & set(section_fields(CurriculumConfig))
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "curriculum" in path.relative_to(PACKAGE).parts:
            continue
        for line, value in _matched_names(ast.parse(path.read_text()), values, fields):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {value!r}")
    assert found == [], "ask the curriculum's objects instead of matching their names:\n" + "\n".join(found)

    # The check sees the patterns 0.2 used.
    old = 'if c.kind == "slw" and c["pacing"] != "discrete": pass\nc.update(kind="slw")\nx = {"kind": "bsz_warmup"}'
    old += '\nif "slw" in state: pass'  # a state's key, not a curriculum
    assert sorted(v for _, v in _matched_names(ast.parse(old), values, fields)) == [
        "bsz_warmup",
        "discrete",
        "slw",
        "slw",
    ]


def test_the_method_imports_neither_yaml_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys; import seqwarm.curriculum, seqwarm.schedule; "
        "print(sorted(m for m in ('yaml', 'torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
