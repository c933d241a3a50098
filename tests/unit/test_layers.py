"""The package's layers, read from the source (no imports run): data <- methods <- training <- generation <- eval
<- cli, with bench and demo at the top beside cli, and the base modules every layer loads models and reports
errors through at the bottom. A lower layer never imports a higher one, and no module imports another
module's private (``_name``) helper: what two modules share is a public name of the lower one."""

import ast
from pathlib import Path

import fatune

PACKAGE = Path(fatune.__file__).resolve().parent
# Rank of each top-level module or subpackage; a module may import its own rank or lower. Modules not listed
# (export, serve, the GGUF writer, testing, ...) are not ranked here.
RANKS = {"errors": 0, "fsutil": 0, "hub": 0, "console": 0, "attention": 0, "models": 0, "artifact": 0,
         "environment": 0,
         "config": 1, "data": 1, "methods": 2, "training": 3, "generation": 4, "eval": 5,
         "cli": 6, "bench": 6, "demo": 6}
# Private imports across modules that wait for their owner to make the name public (say why in a comment).
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def _imports():
    """``(importer, imported module, [names])`` for every ``fatune`` import in the package, lazy ones included."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        importer = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fatune":
                yield importer, node.module, [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "fatune":
                        yield importer, alias.name, []


def _rank(module: str) -> int | None:
    parts = module.split(".")
    return RANKS.get(parts[1]) if len(parts) > 1 else None


def test_no_layer_imports_a_higher_one():
    reaches = [f"{importer} imports {module}" for importer, module, names in _imports()
               if None not in (_rank(importer), _rank(module)) and _rank(module) > _rank(importer)]
    assert not reaches, reaches


def test_no_module_imports_another_modules_private_helpers():
    private = {(importer, module, name) for importer, module, names in _imports() for name in names
               if name.startswith("_") and not name.startswith("__") and module != importer}
    assert private <= KNOWN_PRIVATE, sorted(private - KNOWN_PRIVATE)


def test_the_checks_see_the_imports_they_judge():
    """The import walk finds lazy imports inside functions too (most of fatune's are), so a reach-in written
    inside a function body is judged like one at the top of a file."""
    found = {(importer, module) for importer, module, _ in _imports()}
    assert ("fatune.models", "fatune.attention") in found  # inside load_model
    assert ("fatune.bench.embed_rows", "fatune.console") in found  # inside child_main
