"""The package's shape: no import cycle anywhere in src/, every module importable on its own,
and the public API pinned so that users' code and the README's examples keep working."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kinesis_esm

SRC = Path(kinesis_esm.__file__).resolve().parent
PACKAGE = "kinesis_esm"

PUBLIC_API = (
    "CallableFunction",
    "ConfigError",
    "DaemonConfig",
    "DestinationConfig",
    "Engine",
    "EngineStatistics",
    "EventSourceMappingConfig",
    "Filter",
    "FilterCriteria",
    "FunctionConfig",
    "FunctionError",
    "InvokeResult",
    "KinesisConfig",
    "KinesisESMError",
    "KinesisSource",
    "LambdaContext",
    "MappingCounters",
    "MappingStatistics",
    "MemoryCheckpointStore",
    "MemoryStream",
    "NotSupportedYetError",
    "OnFailure",
    "PollSettings",
    "Record",
    "RetrySettings",
    "SQLiteCheckpointStore",
    "ShardStatistics",
    "SourceError",
    "StateConfig",
    "__version__",
    "build_event",
    "load_config",
    "stable_uuid",
    "tune_gc",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = (PACKAGE, *path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    """Every import, also under ``if TYPE_CHECKING:`` and inside functions: a type-only
    reference back up the stack is still a back-reference."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def import_graph() -> dict[str, set[str]]:
    """module → the kinesis_esm modules it imports (ancestors excluded: a module
    always runs its packages' ``__init__`` first, which is not a dependency it chose)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith(PACKAGE)]
            else:
                if node.level:
                    base = package
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    module = f"{base}.{node.module}" if node.module else base
                elif (node.module or "").startswith(PACKAGE):
                    module = node.module or ""
                else:
                    continue
                targets = [
                    f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                    for a in node.names
                ]
            for target in targets:
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_graph_walk_finds_a_cycle_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_src() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk saw the package
    assert "kinesis_esm.pipeline._consumer" in graph["kinesis_esm.engine._mapping"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_pipeline_does_not_reach_up_the_stack() -> None:
    """The per-shard pipeline and the pure policy know nothing of the layers that run them."""
    graph = import_graph()
    upper = ("engine", "runtime", "control", "cli")
    for name, targets in graph.items():
        if name.startswith(("kinesis_esm.pipeline", "kinesis_esm.policy", "kinesis_esm.source")):
            bad = [t for t in targets if t.split(".")[1] in upper]
            assert not bad, f"{name} imports {bad}"


def test_every_module_imports_on_its_own() -> None:
    """In a fresh interpreter, each module imported first: an import cycle would fail here."""
    names = sorted(_modules())
    script = (
        "import importlib, sys\n"
        f"names = {names!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'kinesis_esm']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_public_api_is_pinned() -> None:
    assert tuple(kinesis_esm.__all__) == PUBLIC_API
    for name in PUBLIC_API:
        assert getattr(kinesis_esm, name) is not None, name
