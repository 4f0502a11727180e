"""Issue 24: the concepts package without circles and repeated logic.

The data records live below the estimator base (``_data``), save / load in
``_persistence``, the torch estimators' start-or-resume prologue and network
cache in ``_network``, and one token batch for per-token inference
(``_training.TOKEN_BATCH``).
"""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import clvqlearn.concepts
from clvqlearn import CrossLayerVQ, SingleLayerVQ, SparseAutoencoder
from clvqlearn.concepts import _training
from clvqlearn.concepts._network import _NetworkEstimator
from clvqlearn.concepts.vq import _VQEstimator
from clvqlearn.nn.clvq import CLVQNetwork
from clvqlearn.nn.sae import SparseAutoencoderNet


def import_cycles(package) -> list:
    """Cycles among the modules of ``package``, counting imports inside functions too."""
    folder = Path(package.__file__).parent
    names = {file.stem for file in folder.glob("*.py")}
    graph = {}
    for file in folder.glob("*.py"):
        edges = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [alias.name for alias in node.names]
                edges |= {t.split(".")[0] for t in targets if t.split(".")[0] in names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package.__name__ + "."):
                edges.add(node.module[len(package.__name__) + 1:].split(".")[0])
        graph[file.stem] = edges - {file.stem, "__init__"}
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_the_concepts_modules_import_each_other_without_a_circle():
    assert import_cycles(clvqlearn.concepts) == []


def test_the_torch_estimators_share_the_prologue_and_the_network_cache():
    for cls in (_VQEstimator, SparseAutoencoder):
        assert issubclass(cls, _NetworkEstimator)
        for name in ("_network", "_begin_fit", "_keep_network"):
            assert name in vars(_NetworkEstimator), f"the shared base lost {name}"
            assert name not in vars(cls), f"{cls.__name__} has its own {name}"


def _pairs(n=40, seed=0):
    from clvqlearn import LayerPairs

    rng = np.random.default_rng(seed)
    return LayerPairs(low=rng.normal(size=(n, 3)).astype(np.float32), high=rng.normal(size=(n, 5)).astype(np.float32),
                      offsets=np.arange(0, n + 1, 4))


def _counting(monkeypatch, cls, method):
    calls = []
    original = getattr(cls, method)

    def counted(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, counted)
    return calls


@pytest.mark.parametrize("ask", ["transform", "predict", "reconstruct"])
def test_one_token_batch_chunks_the_sae_and_the_vq_inference(monkeypatch, ask):
    pairs = _pairs()
    sae = SparseAutoencoder(k=4, max_epochs=1, device="cpu", random_state=0).fit(pairs)
    vq = SingleLayerVQ(k=4, top_k=2, decoder="mlp", decoder_hidden=8, max_epochs=1, device="cpu",
                       random_state=0).fit(pairs)
    whole = {"sae": getattr(sae, ask)(pairs), "vq": getattr(vq, ask)(pairs)}
    monkeypatch.setattr(_training, "TOKEN_BATCH", 7)
    sae_calls = _counting(monkeypatch, SparseAutoencoderNet,
                          "forward" if ask == "reconstruct" else "pre_activations")
    vq_calls = _counting(monkeypatch, CLVQNetwork, "encode" if ask == "reconstruct" else "quantize")
    np.testing.assert_allclose(getattr(sae, ask)(pairs), whole["sae"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(getattr(vq, ask)(pairs), whole["vq"], rtol=1e-6, atol=1e-7)
    assert sae_calls == [7] * 5 + [5]  # 40 token rows in batches of the one TOKEN_BATCH
    if ask != "reconstruct":  # the per-token decoder reads TOKEN_BATCH through predict_batches
        assert vq_calls == [7] * 5 + [5]


def test_load_reads_config_json_with_the_shared_sidecar_reader(tmp_path):
    folder = CrossLayerVQ(k=3, top_k=2, decoder="mlp", decoder_hidden=8, encoder_hidden=8, max_epochs=1,
                          device="cpu", random_state=0).fit(_pairs()).save(tmp_path / "vq")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "version": -1}))
    with pytest.raises(ValueError, match="the format version must be a non-negative integer, got -1") as info:
        CrossLayerVQ.load(folder)
    assert str(config_file) in str(info.value)
    config_file.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        CrossLayerVQ.load(folder)
    config_file.unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found: .* is not a folder written by CrossLayerVQ"):
        CrossLayerVQ.load(folder)
