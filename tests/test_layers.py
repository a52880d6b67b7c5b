"""The package's folders are layers: each imports only its own folder and the ones below it, read from the source
with `ast` (lazy imports inside functions included), and the shared vocabulary at the top has no import circle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first. "" is the shared vocabulary at the package's top (models, refs, config, redact, logs); jobs/ holds
# RQ's entry points, outside the package so queued jobs keep their dotted names; __main__ is the command itself.
LAYERS = ("", "store", "forges", "workspace", "agents", "work", "intake", "web", "jobs", "service", "__main__")


def module_names(root: Path) -> dict[str, Path]:
    """Every module of forge_bridge and jobs below `root`, by dotted name."""
    names = {}
    for top in ("forge_bridge", "jobs"):
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ours that `name` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {target for target in found if target in known and target != name}


def layer_of(name: str) -> str:
    if name == "jobs" or name.startswith("jobs."):
        return "jobs"
    parts = name.split(".")
    if len(parts) == 1:
        return ""                       # forge_bridge/__init__.py
    if parts[1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 2 or parts[1] in LAYERS else ""


def violations(root: Path) -> list[str]:
    """Each import that goes up a layer, each folder not in LAYERS, and each circle among the top-level modules."""
    known = module_names(root)
    found = [f"{name}: folder {layer_of(name)!r} is not a layer" for name in known if layer_of(name) not in LAYERS]
    graph = {name: imported(name, path, known) for name, path in known.items()}
    for name, targets in graph.items():
        for target in sorted(targets):
            source, below = layer_of(name), layer_of(target)
            if source in LAYERS and below in LAYERS and LAYERS.index(below) > LAYERS.index(source):
                found.append(f"{name} imports {target}: {below or 'the top'} is above {source or 'the top'}")
    vocabulary = {name for name in known if layer_of(name) == "" and name != "forge_bridge"}
    found += [f"import circle: {' -> '.join(circle)}" for circle in _circles(graph, vocabulary)]
    return found


def _circles(graph: dict[str, set[str]], among: set[str]) -> list[list[str]]:
    circles, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            circles.append(path[path.index(name):] + [name])
            return
        if name in done:
            return
        for target in sorted(graph[name] & among):
            visit(target, path + [name])
        done.add(name)

    for name in sorted(among):
        visit(name, [])
    return circles


def test_every_import_goes_down_a_layer_or_stays():
    assert violations(ROOT) == []


def test_every_folder_says_what_it_does_and_may_import():
    for folder in LAYERS[1:]:
        init = ROOT / ("jobs" if folder == "jobs" else f"forge_bridge/{folder}") / "__init__.py"
        if folder == "__main__":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc.lower(), f"{init} has no docstring saying what it may import"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, expected", [
    ({"forge_bridge/store/queue.py": "from forge_bridge.work import runner\n",
      "forge_bridge/work/runner.py": ""}, "forge_bridge.store.queue imports forge_bridge.work.runner"),
    ({"forge_bridge/forges/github.py": "def later():\n    from ..intake import poller\n",
      "forge_bridge/intake/poller.py": ""}, "forge_bridge.forges.github imports forge_bridge.intake.poller"),
    ({"forge_bridge/models.py": "import forge_bridge.store.sessions\n",
      "forge_bridge/store/sessions.py": ""}, "forge_bridge.models imports forge_bridge.store.sessions"),
    ({"forge_bridge/models.py": "from forge_bridge import refs\n",
      "forge_bridge/refs.py": "from forge_bridge.models import X\n"}, "import circle: forge_bridge.models"),
    ({"forge_bridge/misc/thing.py": ""}, "folder 'misc' is not a layer"),
])
def test_a_reverse_import_is_found(tmp_path, files, expected):
    found = violations(_tree(tmp_path, {"forge_bridge/__init__.py": "", "jobs/__init__.py": "", **files}))
    assert any(expected in line for line in found), found


def test_imports_downward_are_allowed(tmp_path):
    tree = _tree(tmp_path, {"forge_bridge/__init__.py": "", "jobs/__init__.py": "",
                            "forge_bridge/work/runner.py": "from forge_bridge.store import queue\nfrom ..agents import x\n",
                            "forge_bridge/store/queue.py": "from forge_bridge import models\n",
                            "forge_bridge/agents/x.py": "", "forge_bridge/models.py": ""})
    assert violations(tree) == []
