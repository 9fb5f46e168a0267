"""The package's shape, checked statically: the tree tells the data flow (core <- host, runtime <- eval,
cli), no two modules share a name, and every parameter a message names has its command-line flag."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edgecl"
# The one import across the line, and why: the PyTorch runtime (a fallback, or asked for with
# --runtime torch) rebuilds the timm architecture, which is host code. It is imported inside the
# function that serves that runtime, so a device that runs onnxruntime or TensorRT never loads it.
ALLOWED = {("runtime/embedders.py", "edgecl.host.backbones")}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, whether at module level) for every import of `path`."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [
                (f"{node.module}.{alias.name}" if node.module == "edgecl" else node.module, id(node) in top)
                for alias in node.names
            ]
    return found


@pytest.mark.parametrize("side", ["core", "runtime"])
def test_core_and_runtime_import_nothing_from_host_eval_or_cli(side):
    crossing = []
    for path in (PACKAGE / side).rglob("*.py"):
        where = path.relative_to(PACKAGE).as_posix()
        for module, at_top in imports(path):
            if re.match(r"edgecl\.(host|eval|cli)\b", module) and ((where, module) not in ALLOWED or at_top):
                crossing.append(f"{where} imports {module}")
    assert crossing == []


def test_the_one_allowed_crossing_is_still_needed():
    for where, module in ALLOWED:
        assert (module, False) in imports(PACKAGE / where), f"{where} no longer imports {module}: drop it from ALLOWED"


@pytest.mark.parametrize("side", ["core", "runtime"])
def test_core_and_runtime_never_import_host_only_libraries_at_module_level(side):
    loaded = [
        f"{p.relative_to(PACKAGE)}: {m}"
        for p in (PACKAGE / side).rglob("*.py")
        for m, top in imports(p)
        if top and m.split(".")[0] in ("timm", "onnx", "onnxscript", "torchvision")
    ]
    assert loaded == []


def test_no_two_modules_share_a_name():
    names = Counter(p.stem for p in modules() if p.stem not in ("__init__", "__main__"))
    assert [name for name, n in names.items() if n > 1] == []
    packages = {p.name for p in PACKAGE.rglob("*") if p.is_dir() and (p / "__init__.py").exists()}
    assert packages.isdisjoint(names), "a module named like a package"


def test_every_parameter_a_message_names_has_a_flag():
    from edgecl.cli.messages import FLAGS

    named = {m for p in modules() for m in re.findall(r"""\bparam\(['"]([a-z_]+)['"]""", p.read_text())}
    assert named and named <= set(FLAGS), sorted(named - set(FLAGS))


def test_library_messages_name_no_flags():
    """Outside cli/ (and the demo, which runs the command line), a message says param('x'), never --x."""
    offenders = []
    for path in modules():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/") or rel == "eval/demo.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "EdgeclError":
                text = ast.unparse(node)
                if re.search(r"(?<![\w`])--[a-z]", text.split("`edgecl")[0]):
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []
