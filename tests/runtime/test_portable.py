"""The portable runtime, as shipped (``runtime_files``: the bundle and the Triton service copy exactly
these): every file parses as Python 3.8, imports neither torch nor onnx, and imports from the package
only what is shipped beside it (or guards the import against its absence)."""

from __future__ import annotations

import ast

import pytest

from aspp_deploy.runtime.portable import PACKAGE, runtime_files

FORBIDDEN = {"torch", "torchvision", "onnx", "onnxsim", "onnxscript", "onnxconverter_common"}
SHIPPED = runtime_files()
SHIPPED_MODULES = {".".join(("aspp_deploy",) + p.with_suffix("").parts).removesuffix(".__init__") for p in SHIPPED}


def _guarded(node: ast.AST, parents: dict) -> bool:
    """Inside a ``try`` that catches ImportError (an optional part, absent from the bundle)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            return True
    return False


def _imports(tree: ast.AST):
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node, _guarded(node, parents)) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node, _guarded(node, parents)


def test_the_runtime_is_the_runtime_package_whole():
    on_disk = {p.relative_to(PACKAGE) for p in (PACKAGE / "runtime").rglob("*.py") if "__pycache__" not in p.parts}
    assert on_disk and on_disk <= set(SHIPPED)


@pytest.mark.parametrize("rel", [p.as_posix() for p in SHIPPED])
def test_python38_and_no_torch_or_onnx(rel):
    source = (PACKAGE / rel).read_text()
    tree = ast.parse(source, filename=rel, feature_version=(3, 8))  # SyntaxError names the line
    for module, node, guarded in _imports(tree):
        root = module.split(".")[0]
        assert root not in FORBIDDEN, f"{rel}:{node.lineno} imports {module}"
        if root == "aspp_deploy" and not guarded:
            assert module in SHIPPED_MODULES or any(m.startswith(module + ".") for m in SHIPPED_MODULES), (
                f"{rel}:{node.lineno} imports {module}, which the runtime does not ship")


def test_the_check_can_fail():
    tree = ast.parse("def f():\n    import torch\n", feature_version=(3, 8))
    assert [m for m, _, _ in _imports(tree)] == ["torch"]
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 8))
