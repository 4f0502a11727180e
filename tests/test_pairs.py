"""LayerPairs: the container every estimator reads (sizes, slicing, views, persistence, bad input)."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clvqlearn import LayerPairs


def _pairs(lengths=(2, 0, 3, 1), d_low=3, d_high=2, seed=0, metadata=True, dtype=np.float32):
    """Token rows numbered so that every row is recognisable after slicing."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n, d_low)).astype(dtype)
    high = rng.normal(size=(n, d_high)).astype(dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    extra = dict(token_ids=np.arange(100, 100 + n), tokens=np.array([f"t{i}" for i in range(n)], dtype=object),
                 positions=np.concatenate([np.arange(1, m + 1) for m in lengths] or [np.zeros(0, np.int64)]))
    return LayerPairs(low=low, high=high, offsets=offsets, layers=(2, 5), model_name="org/model",
                      **(extra if metadata else {}))


def _rows_of(pairs, doc):
    return slice(int(pairs.offsets[doc]), int(pairs.offsets[doc + 1]))


def _assert_same(a: LayerPairs, b: LayerPairs):
    np.testing.assert_array_equal(np.asarray(a.low), np.asarray(b.low))
    np.testing.assert_array_equal(np.asarray(a.high), np.asarray(b.high))
    np.testing.assert_array_equal(a.offsets, b.offsets)
    for name in ("token_ids", "tokens", "positions"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert a.layers == b.layers and a.model_name == b.model_name


# -------------------------------------------------------------------- sizes
def test_sizes_and_the_token_matrix():
    pairs = _pairs()
    assert len(pairs) == pairs.n_docs == 4
    assert pairs.n_tokens == 6
    assert pairs.lengths.tolist() == [2, 0, 3, 1]
    assert pairs.doc_index.tolist() == [0, 0, 2, 2, 2, 3]
    matrix = np.asarray(pairs)
    assert matrix.shape == (6, 5) and pairs.shape == (4, 5)  # samples are documents
    np.testing.assert_array_equal(matrix, np.hstack([pairs.low, pairs.high]))
    assert np.asarray(pairs, dtype=np.float64).dtype == np.float64


# ------------------------------------------------------------------ slicing
@st.composite
def _corpus_and_selection(draw):
    lengths = draw(st.lists(st.integers(0, 4), min_size=1, max_size=8))
    n_docs = len(lengths)
    docs = draw(st.lists(st.integers(-n_docs, n_docs - 1), max_size=10))
    return lengths, docs


@settings(max_examples=60, deadline=None)
@given(_corpus_and_selection())
def test_take_returns_exactly_the_selected_documents_in_order(case):
    lengths, docs = case
    pairs = _pairs(lengths)
    part = pairs.take(docs)
    assert part.n_docs == len(docs)
    normalized = [d % pairs.n_docs for d in docs]
    assert part.lengths.tolist() == [lengths[d] for d in normalized]
    for i, doc in enumerate(normalized):
        mine, theirs = _rows_of(part, i), _rows_of(pairs, doc)
        np.testing.assert_array_equal(part.low[mine], pairs.low[theirs])
        np.testing.assert_array_equal(part.high[mine], pairs.high[theirs])
        np.testing.assert_array_equal(part.token_ids[mine], pairs.token_ids[theirs])
        np.testing.assert_array_equal(part.tokens[mine], pairs.tokens[theirs])
        np.testing.assert_array_equal(part.positions[mine], pairs.positions[theirs])
    assert part.layers == pairs.layers and part.model_name == pairs.model_name


def test_getitem_accepts_int_slice_mask_and_index_array():
    pairs = _pairs()
    one = pairs[2]
    assert one.n_docs == 1 and one.n_tokens == 3
    np.testing.assert_array_equal(one.low, pairs.low[2:5])
    _assert_same(pairs[1:3], pairs.take([1, 2]))
    _assert_same(pairs[::-1], pairs.take([3, 2, 1, 0]))
    _assert_same(pairs[np.array([True, False, False, True])], pairs.take([0, 3]))
    _assert_same(pairs[[3, 0]], pairs.take([3, 0]))
    _assert_same(pairs[-1], pairs.take([3]))
    empty = pairs[4:]
    assert empty.n_docs == 0 and empty.n_tokens == 0 and empty.low.shape == (0, 3)


def test_take_refuses_documents_out_of_range():
    pairs = _pairs()
    with pytest.raises(IndexError, match="out of range for 4 documents"):
        pairs.take([4])
    with pytest.raises(IndexError, match="out of range"):
        pairs.take([-5])
    with pytest.raises(IndexError):
        pairs[7]


def test_slices_are_copies_of_memory_mapped_pairs(tmp_path):
    mapped = LayerPairs.load(_pairs().save(tmp_path / "p"))
    part = mapped[0:2]
    assert not isinstance(part.low, np.memmap) and part.low.flags.writeable
    part.low[:] = 0  # never reaches the file
    assert np.abs(LayerPairs.load(tmp_path / "p").low[:2]).sum() > 0


# -------------------------------------------------------------- concatenate
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=8), st.data())
def test_concatenating_consecutive_pieces_gives_back_the_whole(lengths, data):
    pairs = _pairs(lengths)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(lengths)), max_size=4)))
    bounds = [0, *cuts, len(lengths)]
    pieces = [pairs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    _assert_same(LayerPairs.concatenate(pieces), pairs)


def test_concatenate_drops_metadata_that_some_part_lacks_and_refuses_bad_parts():
    with_meta, without = _pairs((1, 2)), _pairs((3,), metadata=False, seed=1)
    joined = LayerPairs.concatenate([with_meta, without])
    assert joined.n_docs == 3 and joined.lengths.tolist() == [1, 2, 3]
    assert joined.token_ids is None and joined.tokens is None and joined.positions is None
    np.testing.assert_array_equal(joined.high[3:], without.high)
    with pytest.raises(ValueError, match="at least one"):
        LayerPairs.concatenate([])
    with pytest.raises(ValueError):  # different layer widths cannot be stacked
        LayerPairs.concatenate([_pairs(d_low=3), _pairs(d_low=4)])


# -------------------------------------------------------------------- views
def test_to_frame_indexes_tokens_by_document_position_and_token():
    pairs = _pairs()
    frame = pairs.to_frame()
    assert isinstance(frame, pd.DataFrame) and frame.shape == (6, 5)
    assert list(frame.columns) == ["low_0", "low_1", "low_2", "high_0", "high_1"]
    assert frame.index.names == ["doc", "position", "token"]
    assert frame.index.get_level_values("doc").tolist() == pairs.doc_index.tolist()
    assert frame.index.get_level_values("position").tolist() == pairs.positions.tolist()
    assert frame.index.get_level_values("token").tolist() == list(pairs.tokens)
    np.testing.assert_array_equal(frame.to_numpy(), np.asarray(pairs))
    np.testing.assert_array_equal(pairs.to_frame("low").to_numpy(), pairs.low)
    assert list(pairs.to_frame("high").columns) == ["high_0", "high_1"]


def test_to_frame_without_metadata_counts_positions_within_each_document():
    frame = _pairs(metadata=False).to_frame("high")
    assert frame.index.get_level_values("position").tolist() == [0, 1, 0, 1, 2, 0]
    assert set(frame.index.get_level_values("token")) == {""}
    with pytest.raises(ValueError, match="which must be"):
        _pairs().to_frame("middle")


# -------------------------------------------------------------- persistence
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_save_load_round_trip_memory_maps_by_default(tmp_path, dtype):
    pairs = _pairs(dtype=dtype)
    pairs.extra.update(max_length=32, note="x", skipped=object())  # only JSON-able extras are saved
    folder = pairs.save(tmp_path / "pairs")
    assert folder == tmp_path / "pairs"
    loaded = LayerPairs.load(folder)
    _assert_same(loaded, pairs)
    assert isinstance(loaded.low, np.memmap) and isinstance(loaded.high, np.memmap)
    assert loaded.low.dtype == dtype and not loaded.low.flags.writeable  # mmap_mode="r"
    assert loaded.extra == {"max_length": 32, "note": "x"}
    assert loaded.layers == (2, 5) and isinstance(loaded.layers, tuple)


def test_load_into_memory_and_copy_on_write(tmp_path):
    pairs = _pairs()
    folder = pairs.save(tmp_path / "pairs")
    in_memory = LayerPairs.load(folder, mmap_mode=None)
    assert not isinstance(in_memory.low, np.memmap)
    _assert_same(in_memory, pairs)
    private = LayerPairs.load(folder, mmap_mode="c")
    private.low[0] = 99.0  # copy-on-write: the file keeps its values
    np.testing.assert_array_equal(LayerPairs.load(folder).low, pairs.low)


def test_save_without_metadata_loads_without_it(tmp_path):
    pairs = _pairs(metadata=False)
    loaded = LayerPairs.load(pairs.save(tmp_path / "bare"))
    _assert_same(loaded, pairs)
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["high.npy", "low.npy", "meta.json",
                                                                      "offsets.npy"]


def test_load_refuses_other_folders_and_newer_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json is missing"):
        LayerPairs.load(tmp_path)
    folder = _pairs().save(tmp_path / "pairs")
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "format": "something.else"}))
    with pytest.raises(ValueError, match="not 'clvqlearn.LayerPairs'"):
        LayerPairs.load(folder)
    (folder / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="format version 99; this clvqlearn reads up to version 1. Upgrade"):
        LayerPairs.load(folder)



@pytest.mark.parametrize(("edit", "match"), [
    (lambda meta: "{not json", r"meta.json is not valid JSON"),
    (lambda meta: json.dumps([meta]), r"meta.json: expected a JSON object, got list"),
    (lambda meta: json.dumps({k: v for k, v in meta.items() if k != "layers"}),
     r"meta.json: missing key\(s\) \['layers'\]"),
    (lambda meta: json.dumps({**meta, "layers": "1,2"}), r"meta.json: 'layers' must be a JSON list"),
    (lambda meta: json.dumps({**meta, "version": "two"}), r"meta.json: the format version must be a non-negative"),
])
def test_load_names_a_damaged_meta_json(tmp_path, edit, match):
    folder = _pairs().save(tmp_path / "pairs")
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(edit(meta))
    with pytest.raises(ValueError, match=match):
        LayerPairs.load(folder)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(low=np.zeros(4)), ValueError, "2-D low and high"),
    (dict(high=np.zeros((3, 2))), ValueError, "same number of token rows"),
    (dict(offsets=[1, 4]), ValueError, "offsets must be"),
    (dict(offsets=[0, 3]), ValueError, "ending at n_tokens=4"),
    (dict(offsets=[0, 3, 2, 4]), ValueError, "non-decreasing"),
    (dict(offsets=[]), ValueError, "offsets must be"),
    (dict(token_ids=np.arange(3)), ValueError, r"token_ids must have shape \(4,\)"),
    (dict(tokens=np.array([["a"]] * 4)), ValueError, r"tokens must have shape \(4,\)"),
    (dict(positions=np.arange(5)), ValueError, r"positions must have shape \(4,\)"),
    (dict(layers=(1, 2, 3)), ValueError, "layers must be a"),
    (dict(layers="12"), ValueError, "layers must be a"),
    (dict(layers=(1.5, 2)), ValueError, "layers must be a"),
    (dict(layers=(True, 2)), ValueError, "layers must be a"),
    (dict(model_name=7), TypeError, "model_name must be a string"),
])
def test_bad_input_is_refused_with_a_clear_error(kwargs, error, match):
    good = dict(low=np.zeros((4, 3)), high=np.zeros((4, 2)), offsets=[0, 1, 4])
    with pytest.raises(error, match=match):
        LayerPairs(**{**good, **kwargs})


def test_numpy_integer_layers_are_stored_as_ints():
    pairs = LayerPairs(low=np.zeros((1, 1)), high=np.zeros((1, 1)), offsets=[0, 1], layers=(np.int64(3), 4))
    assert pairs.layers == (3, 4) and all(type(v) is int for v in pairs.layers)


# ------------------------------------------------------- scikit-learn model selection
def _corpus(n_docs=30, seed=0, layers=(1, 2), model="toy"):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, size=n_docs)
    n = int(lengths.sum())
    low = (rng.normal(size=(4, 3)) * 3)[rng.integers(0, 4, size=n)] + rng.normal(size=(n, 3))
    return LayerPairs(low=low.astype(np.float32), high=np.tanh(low @ rng.normal(size=(3, 2))).astype(np.float32),
                      offsets=np.concatenate([[0], np.cumsum(lengths)]), layers=layers, model_name=model)


@settings(max_examples=30)
@given(lengths=st.lists(st.integers(0, 5), min_size=1, max_size=12), data=st.data())
def test_scikit_learn_counts_and_selects_documents(lengths, data):
    from sklearn.utils import _safe_indexing
    from sklearn.utils.validation import _num_samples

    pairs = _pairs(lengths=tuple(lengths))
    assert _num_samples(pairs) == len(pairs) == pairs.n_docs
    docs = data.draw(st.lists(st.integers(0, len(lengths) - 1), max_size=8))
    _assert_same(_safe_indexing(pairs, np.asarray(docs, dtype=np.int64)), pairs.take(docs))
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=len(lengths), max_size=len(lengths))))
    _assert_same(_safe_indexing(pairs, mask), pairs.take(np.flatnonzero(mask)))


def _document_fold_scores(estimator, pairs, n_splits):
    from sklearn.base import clone
    from sklearn.model_selection import KFold

    folds = KFold(n_splits).split(np.arange(pairs.n_docs))
    return np.array([clone(estimator).fit(pairs.take(tr)).score(pairs.take(te)) for tr, te in folds])


@pytest.mark.parametrize("kind", ["memory", "store"])
def test_grid_search_and_cross_val_score_with_integer_cv_give_document_folds(kind, tmp_path):
    from sklearn.model_selection import GridSearchCV, cross_val_score

    from clvqlearn import KMeansConcepts
    from clvqlearn.data import StoreSpec, texts_fingerprint, write_store

    pairs = _corpus()
    if kind == "store":
        spec = StoreSpec(model_name="toy", layers=(1, 2), widths=(3, 2), n_docs=pairs.n_docs, shard_size=7,
                         texts_sha256=texts_fingerprint(map(str, range(pairs.n_docs))))
        X = write_store(tmp_path / "store", lambda a, b: pairs[a:b], spec)
        X = LayerPairs.open(tmp_path / "store")
    else:
        X = pairs
    estimator = KMeansConcepts(k=3, n_init=1, random_state=0)
    expected = _document_fold_scores(estimator, pairs, 5)
    np.testing.assert_allclose(cross_val_score(estimator, X, cv=5), expected, rtol=1e-6)
    search = GridSearchCV(estimator, {"k": [2, 3]}, cv=5).fit(X)
    np.testing.assert_allclose([search.cv_results_[f"split{i}_test_score"][1] for i in range(5)], expected, rtol=1e-6)
    assert search.best_estimator_.n_features_in_ == 5


def test_a_path_string_split_into_characters_is_named_as_such(tmp_path):
    from sklearn.model_selection import GridSearchCV

    from clvqlearn import KMeansConcepts

    search = GridSearchCV(KMeansConcepts(k=2), {"k": [2]}, cv=2, error_score="raise")
    with pytest.raises(TypeError, match=r"splits a string, such as a store path.*LayerPairs.open\(path\)"):
        search.fit(str(tmp_path / "store"))


def test_save_refuses_a_folder_with_files_and_overwrite_leaves_nothing_of_the_earlier_save(tmp_path):
    first = _pairs(seed=1)  # with token_ids and positions
    folder = first.save(tmp_path / "p")
    mapped = LayerPairs.load(folder)  # memory-maps the first save's files
    with pytest.raises(FileExistsError, match="already holds files; pass overwrite=True"):
        _pairs(seed=2).save(folder)
    _assert_same(LayerPairs.load(folder, mmap_mode=None), first)  # the refused save changed nothing
    second = _pairs(seed=2, metadata=False)
    second.save(folder, overwrite=True)
    loaded = LayerPairs.load(folder, mmap_mode=None)
    assert loaded.token_ids is None and loaded.positions is None  # no stale files of the first save
    _assert_same(loaded, second)
    np.testing.assert_array_equal(mapped.low, first.low)  # a live reader keeps the earlier data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no staging or old folders left
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        first.save(tmp_path / "f", overwrite=True)


def test_overwrite_replaces_only_an_earlier_save_and_keeps_the_folder_readable(tmp_path):
    import os
    import stat

    pairs = _pairs()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("a user's own file")
    with pytest.raises(FileExistsError, match="not a LayerPairs.save folder"):
        pairs.save(mine, overwrite=True)
    assert (mine / "thesis.txt").read_text() == "a user's own file"
    with pytest.raises(ValueError, match="does not name a folder of its own"):
        pairs.save(tmp_path / "..", overwrite=True)
    folder = pairs.save(tmp_path / "p")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's private 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "p"]


def test_pairs_compare_and_hash_by_identity():
    # fields of arrays have no one truth value: == is identity (as for LayerStack), and pairs can key a dict
    a = LayerPairs(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), np.array([0, 2]))
    b = LayerPairs(a.low, a.high, a.offsets)
    assert a == a and a != b and len({a: 1, b: 2}) == 2
