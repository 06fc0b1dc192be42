"""The layering rule of DESIGN §5, checked on the source: imports go downward only.

cli → actions → domain packages → base. Within the domain, packages have a rank too
(a package may use those ranked below it), actions never import each other, and no
two modules import each other, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

BASE = ("__init__", "errors", "run", "log", "events", "fsutil", "config", "data")
RANK = {
    **{name: 0 for name in BASE},
    "oci": 1,
    "disk": 1,
    "system": 2,
    "boot": 3,
    "snapshot": 4,
    "cloudinit": 4,
    "docgen": 5,
    "actions": 6,
    "cli": 7,
    "__main__": 8,
}


def module_name(path: Path, src: Path) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, src: Path, top: str) -> set[str]:
    """Every module of package top that path imports, wherever the import sits."""
    me = module_name(path, src)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == top}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = me.split(".")[: -node.level] if path.name != "__init__.py" else me.split(".")
                base = ".".join([*pkg, *([node.module] if node.module else [])])
            if base.split(".")[0] != top:
                continue
            for a in node.names:
                # `from cos import events` names a module; `from cos.x import f` a member.
                sub = f"{base}.{a.name}"
                is_module = (src / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    src / Path(*sub.split("."))
                ).is_dir()
                found.add(sub if is_module else base)
    found.discard(me)
    return found


def graph(src: Path, top: str) -> dict[str, set[str]]:
    return {module_name(p, src): imports_of(p, src, top) for p in sorted((src / top).rglob("*.py"))}


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(g: dict[str, set[str]], rank: dict[str, int]) -> list[str]:
    out = []
    for mod, deps in sorted(g.items()):
        a = area(mod)
        if a not in rank:
            out.append(f"{mod}: package {a!r} has no rank in the layering rule")
            continue
        for dep in sorted(deps):
            b = area(dep)
            if a == b:
                if a == "actions" and mod != "cos.actions" and dep != "cos.actions":
                    out.append(f"{mod} imports {dep}: actions never import each other")
                continue
            if a in BASE and b in BASE:
                continue  # the base modules are one layer (cycles are checked apart)
            if b not in rank or rank[b] >= rank[a]:
                out.append(f"{mod} imports {dep}: {a} (rank {rank[a]}) may not use {b}")
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_cos_imports_go_downward_only() -> None:
    g = graph(SRC, "cos")
    assert len(g) > 50  # the walk found the tree
    assert violations(g, RANK) == []


def test_cos_has_no_import_cycles() -> None:
    assert cycles(graph(SRC, "cos")) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = tmp_path / "pkg" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # A domain package reaching up into actions.
        (
            {"disk/plan.py": "from pkg.actions.upgrade import x\n", "actions/upgrade.py": ""},
            "pkg.disk.plan imports pkg.actions.upgrade: disk (rank 1) may not use actions",
        ),
        # One action using another (inside a function counts too).
        (
            {
                "actions/install.py": "def f():\n    from pkg.actions import build_disk\n",
                "actions/build_disk.py": "",
            },
            "pkg.actions.install imports pkg.actions.build_disk: actions never import each other",
        ),
        # Sideways to a package of the same rank.
        (
            {"oci/store.py": "from pkg.disk import image\n", "disk/image.py": ""},
            "pkg.oci.store imports pkg.disk.image: oci (rank 1) may not use disk",
        ),
    ],
)
def test_the_rule_catches_a_violation(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    src = _tree(tmp_path, files)
    assert expected in violations(graph(src, "pkg"), RANK)


def test_the_walk_catches_a_cycle(tmp_path: Path) -> None:
    src = _tree(
        tmp_path,
        {"system/a.py": "from pkg.system import b\n", "system/b.py": "import pkg.system.a\n"},
    )
    assert cycles(graph(src, "pkg")) == [["pkg.system.a", "pkg.system.b"]]
