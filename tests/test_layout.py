"""Layout: imports flow tutorials → alignkit → alignkit.kernels (which import only torch and triton), and no
alignkit module imports itself round a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (a function-level import still ties the two modules)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _graph(package: str) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # an import of a package's attribute names the package unless it is a module of ours
        graph[name] = {target for target in _imports(path) if target in modules and target != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_alignkit_modules_import_without_cycles():
    graph = _graph("alignkit")
    # a package's __init__ re-exporting its modules is not a cycle with those modules importing each other
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and (ROOT / t.replace(".", "/")
                                                                                  / "__init__.py").is_file())}
    assert _cycle(graph) is None, f"import cycle: {' → '.join(_cycle(graph))}"


def test_a_cycle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_kernels_do_not_import_alignkit():
    for path in (ROOT / "alignkit" / "kernels").rglob("*.py"):
        assert not any(name.split(".")[0] == "alignkit" for name in _imports(path)), path
    assert (ROOT / "alignkit" / "kernels" / "token_logps.py").is_file()  # the test looks where the kernels are
    assert not (ROOT / "kernels").exists()  # a top-level kernels/ shadows PyPI's `kernels` (see pyproject.toml)
