"""The import graph of the project's own modules, read from the code (nothing is run).

    python -m tools.import_graph        # each module's floor and the project modules it imports

Every `import` and `from ... import` counts, at the top of a file or inside a function (an
import deferred into a function still ties the two modules). A module's floor is one above the
highest floor of what it imports (floor 0 imports nothing of the project), so an entry point sits
above the loops, the loops above the models. Where imports form a circle there are no floors:
the circles are printed instead, and the exit status is 1. tests/test_layout.py holds the code
to this.
"""
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIPPED = {"tests", ".venv", "outputs", "runs", "saved_models"}


def project_modules(root: Path = REPO) -> dict[str, Path]:
    """{dotted name: file} of every Python module of the project (tests left out)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] in SKIPPED or any(part.startswith(".") for part in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` refers to (a.b.c may be a module, or a name inside a.b)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `module` imports anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the package, `level - 1` packages up
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in (_resolve(name, modules) for name in targets) if target)
    found.discard(module)
    return found


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other through imports (Tarjan's strongly connected
    components of more than one module), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor; the graph must have no circle."""
    floor: dict[str, int] = {}

    def of(module):
        if module not in floor:
            floor[module] = 1 + max((of(target) for target in graph[module]), default=-1)
        return floor[module]

    for module in graph:
        of(module)
    return floor


def main() -> int:
    graph = import_graph()
    found = circles(graph)
    if found:
        for group in found:
            print("circle: " + " <-> ".join(group))
        return 1
    floor = floors(graph)
    for module in sorted(graph, key=lambda m: (-floor[m], m)):
        print(f"{floor[module]:2d}  {module}: {', '.join(sorted(graph[module])) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
