"""The data wing's layout: what its modules import, and the compatibility paths kept for users."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np

import clvqlearn
import clvqlearn.data as data
from clvqlearn import LayerPairs

WING = Path(data.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every clvqlearn module ``path`` imports, at the top or inside a function."""
    package = "clvqlearn.data"  # every module of the wing (and its __init__) resolves relative imports here
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            if module.startswith("clvqlearn"):
                out.add(module)
                out.update(f"{module}.{a.name}" for a in node.names if (WING / f"{a.name}.py").is_file())
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("clvqlearn"))
    return out


def _graph() -> dict[str, set[str]]:
    modules = {f"clvqlearn.data.{p.stem}" if p.stem != "__init__" else "clvqlearn.data": p
               for p in WING.glob("*.py")}
    return {name: _imports(path) for name, path in modules.items()}


def test_the_data_wing_imports_nothing_above_it():
    # the store knows neither the model registry nor the extractor: they hand it shards through a callback
    below = {"clvqlearn._sidecar", "clvqlearn._folders"}  # the bottom-floor helpers the wing reads and writes with
    for module, imported in _graph().items():
        above = {m for m in imported if not (m.startswith("clvqlearn.data") or m in below)}
        assert not above, f"{module} imports {sorted(above)}"
    for path in WING.glob("*.py"):
        assert "_transform_in_memory" not in path.read_text(), path.name


def test_no_circle_between_the_data_modules():
    graph = {m: {i for i in imported if i.startswith("clvqlearn.data.")} for m, imported in _graph().items()}
    order, state = [], {}

    def visit(module, trail):
        assert state.get(module) != "open", f"import circle: {' -> '.join(trail + [module])}"
        if state.get(module) is None:
            state[module] = "open"
            for target in sorted(graph.get(module, ())):
                visit(target, trail + [module])
            state[module] = "done"
            order.append(module)

    for module in sorted(graph):
        visit(module, [])
    # LayerPairs is at the bottom: its open() reaches the reader through the registration, not an import
    assert graph["clvqlearn.data.pairs"] == set()


def test_the_old_import_paths_give_the_same_objects():
    import clvqlearn.pairs
    import clvqlearn.store
    from clvqlearn.extraction import extract_to_store

    assert clvqlearn.pairs.LayerPairs is LayerPairs is data.LayerPairs
    assert clvqlearn.store.extract_to_store is extract_to_store
    for name in set(clvqlearn.store.__all__) - {"extract_to_store"}:
        assert getattr(clvqlearn.store, name) is getattr(data, name), name
    assert clvqlearn.ShardedLayerPairs is data.ShardedLayerPairs


def test_the_stacks_are_public_names_of_the_package():
    from clvqlearn import LayerStack, ShardedLayerStack

    assert LayerStack is data.LayerStack and ShardedLayerStack is data.ShardedLayerStack
    assert {"LayerStack", "ShardedLayerStack"} <= set(clvqlearn.__all__)


def test_a_store_view_pickled_under_the_old_module_path_still_loads(tmp_path):
    rng = np.random.default_rng(0)
    pairs = LayerPairs(low=rng.normal(size=(6, 2)).astype(np.float32), high=np.ones((6, 2), np.float32),
                       offsets=[0, 2, 6], layers=(0, 1), model_name="toy")
    spec = data.StoreSpec("toy", (0, 1), (2, 2), n_docs=2, shard_size=1, texts_sha256="0" * 64)
    store = data.write_store(tmp_path / "s", lambda a, b: pairs[a:b], spec)
    old = f"cclvqlearn.store\nopen_store\n(V{store.path}\ntR.".encode()  # what a pickle of the old store.py held
    for restored in (pickle.loads(old), pickle.loads(pickle.dumps(store))):
        assert isinstance(restored, clvqlearn.ShardedLayerPairs) and restored.path == store.path
        np.testing.assert_array_equal(np.asarray(restored), np.asarray(pairs))
