"""Saved estimators (``concepts/_persistence.py``): ``save`` and ``load``.

Issue 23, item 3: ``load`` refuses tensors holding NaN or infinity and
tensors of another dtype than ``save`` writes, naming the file and the
tensor; a model saved with ``device="cuda"`` loads on a machine without
CUDA; ``save`` into a folder that holds files asks for ``overwrite=True``
and never leaves a half-written save; a wrongly shaped ``components_`` is
named as such.  Issue 15: ``config.json`` is validated, and an unreadable
``model.safetensors`` refused, each error naming the file.
"""

import json
import pickle

import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors.numpy import load_file, save_file

from clvqlearn import CrossLayerVQ, KMeansConcepts, LayerPairs, SingleLayerVQ, SparseAutoencoder

_VQ = dict(k=3, top_k=2, decoder="mlp", decoder_hidden=8, encoder_hidden=8, max_epochs=1, batch_size=16,
           device="cpu", random_state=0)
FACTORIES = {
    "CrossLayerVQ": lambda: CrossLayerVQ(**_VQ),
    "SingleLayerVQ": lambda: SingleLayerVQ(**_VQ),
    "KMeansConcepts": lambda: KMeansConcepts(k=3, random_state=0),
    "SparseAutoencoder": lambda: SparseAutoencoder(k=3, max_epochs=1, device="cpu", random_state=0),
}
CLASSES = {"CrossLayerVQ": CrossLayerVQ, "SingleLayerVQ": SingleLayerVQ, "KMeansConcepts": KMeansConcepts,
           "SparseAutoencoder": SparseAutoencoder}


def _pairs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return LayerPairs(low=rng.normal(size=(n, 3)).astype(np.float32),
                      high=rng.normal(size=(n, 5)).astype(np.float32),
                      offsets=np.arange(0, n + 1, 4), layers=(1, 2), model_name="org/model-a")


def _saved(tmp_path, name):
    est = FACTORIES[name]().fit(_pairs())
    return est, est.save(tmp_path / "est")


def _edit_tensors(folder, edit):
    file = folder / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file))
    return file


def _set_tensor(key, value):
    def edit(tensors):
        tensors[key] = value(tensors[key])
    return edit


def _with(value, index=0):
    def change(array):
        array = array.copy()
        array.reshape(-1)[index] = value
        return array
    return change


# ------------------------------------------------------------------ tensor values and dtypes
BAD_TENSORS = {
    "NaN in components_": ("KMeansConcepts", "attr.components_", _with(np.nan), r"'attr\.components_' holds NaN"),
    "inf in usage_": ("SparseAutoencoder", "attr.usage_", _with(np.inf), r"'attr\.usage_' holds infinity"),
    "NaN in the network": ("CrossLayerVQ", "dict.network_state_.decoder.net.2.weight", _with(np.nan),
                           r"'dict\.network_state_\.decoder\.net\.2\.weight' holds NaN"),
    "NaN in the SAE encoder": ("SparseAutoencoder", "attr.encoder_weights_", _with(np.nan),
                               r"'attr\.encoder_weights_' holds NaN"),
    "int8 components_": ("CrossLayerVQ", "attr.components_", lambda a: a.astype(np.int8),
                         r"'attr\.components_' has dtype int8, expected float32"),
    "float64 components_": ("SingleLayerVQ", "attr.components_", lambda a: a.astype(np.float64),
                            r"'attr\.components_' has dtype float64, expected float32"),
    "float64 network weight": ("CrossLayerVQ", "dict.network_state_.codebook.codes", lambda a: a.astype(np.float64),
                               r"'dict\.network_state_\.codebook\.codes' has dtype float64, expected float32"),
    "float16 SAE decoder": ("SparseAutoencoder", "attr.components_", lambda a: a.astype(np.float16),
                            r"dtype float16, expected float32"),
    "int8 k-means centres": ("KMeansConcepts", "attr.components_", lambda a: a.astype(np.int8),
                             r"dtype int8, expected float32 or float64"),
    "float labels": ("KMeansConcepts", "attr.labels_", lambda a: a.astype(np.float32),
                     r"'attr\.labels_' has dtype float32, expected int64"),
}


@pytest.mark.parametrize("case", BAD_TENSORS)
def test_load_refuses_non_finite_values_and_foreign_dtypes(tmp_path, case):
    name, key, change, match = BAD_TENSORS[case]
    _, folder = _saved(tmp_path, name)
    file = _edit_tensors(folder, _set_tensor(key, change))
    with pytest.raises(ValueError, match=match) as info:
        CLASSES[name].load(folder)
    assert str(file) in str(info.value)


def test_float64_kmeans_centres_and_an_infinite_alpha_still_load(tmp_path):
    pairs = _pairs()
    km = KMeansConcepts(k=3, random_state=0).fit(LayerPairs(low=pairs.low.astype(np.float64),
                                                            high=pairs.high.astype(np.float64),
                                                            offsets=pairs.offsets))
    assert km.components_.dtype == np.float64
    np.testing.assert_array_equal(KMeansConcepts.load(km.save(tmp_path / "km")).components_, km.components_)
    vq = CrossLayerVQ(**{**_VQ, "encoder": "adaptive-fixed", "alpha": float("inf")}).fit(pairs)
    loaded = CrossLayerVQ.load(vq.save(tmp_path / "vq"))
    np.testing.assert_array_equal(loaded.predict(pairs), vq.predict(pairs))


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_wrongly_shaped_components_is_named(tmp_path, name):
    est, folder = _saved(tmp_path, name)
    k, d = est.components_.shape
    file = _edit_tensors(folder, _set_tensor("attr.components_", lambda a: np.hstack([a, a[:, :1]])))
    match = rf"components_ has shape \({k}, {d + 1}\), expected \({k}, {d}\)"
    with pytest.raises(ValueError, match=match) as info:
        CLASSES[name].load(folder)
    assert str(file) in str(info.value)


# ------------------------------------------------------------------ device
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_model_saved_with_cuda_loads_on_a_cpu_only_machine(tmp_path, name, monkeypatch):
    est, folder = _saved(tmp_path, name)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["params"]["device"] = "cuda"  # as written by a fit on a GPU machine
    config_file.write_text(json.dumps(config))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match=r"saved with device='cuda'.*loaded with device='cpu'"):
        loaded = CLASSES[name].load(folder)
    assert loaded.device == "cpu"
    np.testing.assert_array_equal(loaded.predict(_pairs()), est.predict(_pairs()))


# ------------------------------------------------------------------ overwriting
def test_save_into_a_folder_holding_files_asks_for_overwrite(tmp_path):
    first, folder = _saved(tmp_path, "KMeansConcepts")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    second = KMeansConcepts(k=4, random_state=1).fit(_pairs())
    with pytest.raises(FileExistsError, match=r"already exists and is not empty; pass overwrite=True") as info:
        second.save(folder)
    assert str(folder) in str(info.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing lost
    assert KMeansConcepts.load(second.save(folder, overwrite=True)).k == 4
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_save_accepts_an_empty_folder_and_refuses_a_file(tmp_path):
    est = FACTORIES["KMeansConcepts"]().fit(_pairs())
    (tmp_path / "empty").mkdir()
    assert KMeansConcepts.load(est.save(tmp_path / "empty")).k == 3
    (tmp_path / "file").write_text("notes")
    with pytest.raises(FileExistsError, match="is not a folder"):
        est.save(tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").read_text() == "notes"


def test_a_failed_save_leaves_the_earlier_save_whole(tmp_path, monkeypatch):
    first, folder = _saved(tmp_path, "SparseAutoencoder")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def dies_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 16)  # a truncated write, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", dies_half_way)
    second = SparseAutoencoder(k=4, max_epochs=1, device="cpu", random_state=1).fit(_pairs())
    with pytest.raises(OSError, match="No space left"):
        second.save(folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temporary file left either
    with pytest.raises(OSError, match="No space left"):
        second.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ changed settings
def test_save_refuses_a_setting_changed_since_fit(tmp_path):
    est = FACTORIES["CrossLayerVQ"]().fit(_pairs())
    est.set_params(k=5)
    with pytest.raises(ValueError, match=r"k changed since fit.*fitted with k=3"):
        est.save(tmp_path / "est")
    assert not (tmp_path / "est").exists()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_loaded_and_unpickled_models_remember_their_fitted_settings(tmp_path, name):
    _, folder = _saved(tmp_path, name)
    loaded = CLASSES[name].load(folder)
    for est in (loaded, pickle.loads(pickle.dumps(loaded))):
        est.set_params(k=4)
        with pytest.raises(ValueError, match=r"k changed since fit.*Call fit \(not partial_fit"):
            est.partial_fit(_pairs(seed=1))
        assert est.components_.shape[0] == 3


# ------------------------------------------------------------------ config.json and unreadable files (issue 15)
def _edit_config(folder, edit):
    file = folder / "config.json"
    config = json.loads(file.read_text())
    edit(config)
    file.write_text(json.dumps(config))
    return file


def _set(path, value):
    def edit(config):
        target = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


CONFIG_EDITS = {
    "k disagrees with tensors": (_set(["params", "k"], 5),
                                 r"components_ has shape \(3, 5\), expected \(5, 5\): config.json says k=5"),
    "missing params": (lambda c: c.pop("params"), r"missing key\(s\) \['params'\]"),
    "params not an object": (_set(["params"], [1, 2]), "'params' must be a JSON dict"),
    "unknown param": (_set(["params", "n_clusters"], 3), r"params \['n_clusters'\] are not parameters"),
    "param of the wrong type": (_set(["params", "k"], "3"), "invalid params.*k"),
    "property as attribute": (_set(["attributes", "concept_space_"], "low"), "'concept_space_' is not a fitted"),
    "private attribute": (_set(["attributes", "__class__"], "x"), "'__class__' is not a fitted"),
    "missing fitted attribute": (lambda c: c["attributes"].pop("n_iter_"), r"missing fitted attribute.*n_iter_"),
    "n_features_in_ wrong type": (_set(["attributes", "n_features_in_"], "8"), "n_features_in_ must be"),
    "config without a format": (lambda c: c.clear(), "holds format None, not 'clvqlearn.estimator'"),
}


@pytest.mark.parametrize("case", CONFIG_EDITS)
def test_load_validates_config_and_names_the_file(tmp_path, case):
    edit, match = CONFIG_EDITS[case]
    _, folder = _saved(tmp_path, "KMeansConcepts")
    _edit_config(folder, edit)
    with pytest.raises(ValueError, match=match) as info:
        KMeansConcepts.load(folder)
    assert str(folder) in str(info.value)


def test_load_checks_k_against_the_saved_network(tmp_path):
    _, folder = _saved(tmp_path, "CrossLayerVQ")
    _edit_config(folder, _set(["params", "k"], 4))
    with pytest.raises(ValueError, match=r"k=4") as info:
        CrossLayerVQ.load(folder)
    assert str(folder) in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "foreign", "empty"])
def test_unreadable_safetensors_names_the_file(tmp_path, damage):
    _, folder = _saved(tmp_path, "KMeansConcepts")
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"truncated": data[: len(data) // 2], "foreign": b"PK\x03\x04 not tensors", "empty": b""}[damage])
    with pytest.raises(ValueError, match="safetensors") as info:
        KMeansConcepts.load(folder)
    assert str(file) in str(info.value)


def test_load_round_trip_still_works(tmp_path):
    est, folder = _saved(tmp_path, "SparseAutoencoder")
    loaded = SparseAutoencoder.load(folder)
    np.testing.assert_allclose(loaded.transform(_pairs()), est.transform(_pairs()), rtol=1e-6)
