"""Fail when an import goes the wrong way: a package importing one it may not, or two files importing each other.

Koi's packages form a one-way graph (STYLE.md, convention 2). A back-import, even a lazy one inside
a function, makes a cycle that only shows when someone installs one package alone. This script
reads every file under packages/*/src with `ast` (nothing is imported, so it needs neither torch nor
the packages installed, and runs in well under a second) and checks:

1. package edges: each `koi_*` module a file imports belongs to the file's own package or to one
   the allowed graph lets it import (ALLOWED below; the noxfile keeps its own list in step with it);
2. declared dependencies: each package's pyproject.toml names exactly the koi packages it may
   import, with a version range that contains the sibling's current version;
3. file edges: no cycle among the files of one package (imports inside functions count too; an
   import under `if TYPE_CHECKING:` does not, as it never runs).

    python tools/check_imports.py          # prints one line per problem, exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[1]

# package -> the koi packages it may import (and must declare). The one place the direction is decided.
ALLOWED: dict[str, tuple[str, ...]] = {
    "koi-tokenizer": (),
    "koi-quant": (),
    "koi-kernels": ("koi-quant",),
    "koi-eval": ("koi-tokenizer",),
    "koi-train": ("koi-tokenizer", "koi-quant", "koi-kernels", "koi-eval"),
}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (their else branch still runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Absolute names of the modules one file imports; `from .x import y` is `pkg.x.y` if that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found


def top_package(module: str) -> str:
    return module.split(".")[0].replace("_", "-")


def check_package_edges(files: dict[str, tuple[Path, set[str]]]) -> list[str]:
    problems = []
    for module, (path, imports) in sorted(files.items()):
        owner = top_package(module)
        for target in sorted(imports):
            other = top_package(target)
            if other.startswith("koi-") and other != owner and other not in ALLOWED.get(owner, ()):
                allowed = ", ".join(ALLOWED.get(owner, ())) or "no other koi package"
                problems.append(f"{path.relative_to(REPO)}: imports {target}; {owner} may import {allowed}")
    return problems


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A shortest path start -> ... -> start through the graph, if one exists (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return None


def check_file_cycles(files: dict[str, tuple[Path, set[str]]]) -> list[str]:
    graph = {m: {t for t in imports if t in files and t != m} for m, (_, imports) in files.items()}
    problems, seen = [], set()
    for module in sorted(graph):
        cycle = _cycle_from(module, graph)
        if cycle and frozenset(cycle) not in seen:
            seen.add(frozenset(cycle))
            problems.append(f"{files[module][0].relative_to(REPO)}: file import cycle {' -> '.join(cycle)}; "
                            "move what both need into the lower file")
    return problems


def check_declared(root: Path) -> list[str]:
    if tomllib is None:
        return []  # reading pyproject.toml needs Python 3.11; CI's nox runs on 3.11
    from packaging.requirements import Requirement

    projects = {p.name: tomllib.loads((p / "pyproject.toml").read_text())["project"] for p in sorted(root.iterdir())
                if (p / "pyproject.toml").exists()}
    problems = []
    for name, project in projects.items():
        file = f"packages/{name}/pyproject.toml"
        declared = {}
        for line in project.get("dependencies", []):
            req = Requirement(line)
            if req.name.startswith("koi-"):
                declared[req.name] = req
        if set(declared) != set(ALLOWED.get(name, ())):
            problems.append(f"{file}: dependencies name koi packages {sorted(declared)}; "
                            f"expected {sorted(ALLOWED.get(name, ()))} (tools/check_imports.py ALLOWED)")
        for dep, req in declared.items():
            version = projects.get(dep, {}).get("version")
            if version is None or not req.specifier.contains(version, prereleases=True):
                problems.append(f"{file}: dependencies.{dep} {req.specifier} does not admit {dep} {version} "
                                f"(packages/{dep}/pyproject.toml); widen the range or pin the release it needs")
    return problems


def scan(root: Path) -> dict[str, tuple[Path, set[str]]]:
    sources = {}
    for src in sorted(root.glob("*/src")):
        for path in sorted(src.rglob("*.py")):
            sources[module_name(path, src)] = (path, path.name == "__init__.py", src)
    known = set(sources)
    return {m: (p, imported_modules(p, m, is_pkg, known)) for m, (p, is_pkg, _) in sources.items()}


def main(argv: list[str] | None = None) -> int:
    root = Path((argv or sys.argv[1:] or [str(REPO / "packages")])[0]).resolve()
    files = scan(root)
    problems = check_package_edges(files) + check_file_cycles(files) + check_declared(root)
    for line in problems:
        print(line, file=sys.stderr)
    print(f"checked {len(files)} files in {len(ALLOWED)} packages: {len(problems)} import problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
