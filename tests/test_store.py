"""The sharded activation store: format, lazy reading, resume, rank split and bad input."""

from __future__ import annotations

import errno
import json
import os
import pickle
import threading

import numpy as np
import pytest

from clvqlearn import KMeansConcepts, LayerPairExtractor, LayerPairs
from clvqlearn.data import ShardedLayerPairs, StoreSpec, open_store, store_writer, texts_fingerprint, write_store

N_DOCS, SHARD, D_LOW, D_HIGH = 11, 3, 5, 4


def _corpus(seed=0, n_docs=N_DOCS, layers=(1, 2), model="toy"):
    """An in-memory LayerPairs with documents of 1..6 tokens and token strings (some non-ASCII)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 7, size=n_docs)
    n = int(lengths.sum())
    words = np.array(["the", "café", "##s", "", "ünï", "x"], dtype=object)
    return LayerPairs(
        low=rng.normal(size=(n, D_LOW)).astype(np.float32), high=rng.normal(size=(n, D_HIGH)).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(lengths)]), token_ids=rng.integers(0, 1000, size=n),
        tokens=words[rng.integers(0, len(words), size=n)], positions=rng.integers(0, 50, size=n),
        layers=layers, model_name=model, extra={"n_outliers": 0},
    )


def _spec(pairs, dtype="float32", shard_size=SHARD, **kw):
    values = dict(model_name=pairs.model_name, layers=pairs.layers, widths=(D_LOW, D_HIGH), n_docs=pairs.n_docs,
                  shard_size=shard_size, texts_sha256=texts_fingerprint(map(str, range(pairs.n_docs))), dtype=dtype)
    values.update(kw)
    return StoreSpec(**values)


class Maker:
    """make_shard over an in-memory corpus, counting calls; can fail on one shard start."""

    def __init__(self, pairs, fail_at=None):
        self.pairs, self.fail_at, self.calls = pairs, fail_at, []

    def __call__(self, start, stop):
        if start == self.fail_at:
            raise KeyboardInterrupt("interrupted")
        self.calls.append(start)
        return self.pairs[start:stop]


def _assert_same(a, b, exact=True):
    def close(x, y):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)

    check = np.testing.assert_array_equal if exact else close
    check(np.asarray(a.low), np.asarray(b.low))
    check(np.asarray(a.high), np.asarray(b.high))
    for name in ("offsets", "token_ids", "positions"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
    assert list(np.asarray(a.tokens)) == list(np.asarray(b.tokens))
    assert (a.layers, a.model_name) == (b.layers, b.model_name)


def _names(folder):
    """The store's files, without the writers' lock files (kept: the system releases the lock itself)."""
    return sorted(p.name for p in folder.iterdir() if not (p.name.startswith(".writer-") and p.suffix == ".lock"))


def _files(folder):
    return {name: (folder / name).read_bytes() for name in _names(folder)}


# ----------------------------------------------------------------------------- format and reading
def test_round_trip_slicing_and_iteration(tmp_path):
    pairs = _corpus()
    store = write_store(tmp_path / "s", Maker(pairs), _spec(pairs))
    assert isinstance(store, ShardedLayerPairs) and isinstance(store, LayerPairs)
    assert (len(store), store.n_tokens, store.n_shards, store.shape) == (N_DOCS, pairs.n_tokens, 4, pairs.shape)
    _assert_same(store, pairs)
    np.testing.assert_array_equal(np.asarray(store), np.asarray(pairs))
    _assert_same(store[3:8], pairs[3:8])
    _assert_same(store.take([9, 0, 4, -1]), pairs.take([9, 0, 4, -1]))
    _assert_same(store[store.lengths > 3], pairs[pairs.lengths > 3])
    assert type(store[2:4]) is LayerPairs  # slices come back in memory
    shards = list(store.iter_shards())
    assert [s.n_docs for s in shards] == [3, 3, 3, 2]
    assert [s.extra["doc_start"] for s in shards] == [0, 3, 6, 9]
    _assert_same(LayerPairs.concatenate(shards), pairs)
    _assert_same(store.to_memory(), pairs)
    _assert_same(LayerPairs.load(store.save(tmp_path / "saved"), mmap_mode=None), pairs)
    _assert_same(LayerPairs.concatenate([store, store[:2]]), LayerPairs.concatenate([pairs, pairs[:2]]))
    assert _names(tmp_path / "s") == ["manifest.json"] + [
        f"shard-0000{k}.{ext}" for k in range(4) for ext in ("json", "safetensors")
    ]


def test_lazy_columns_index_like_arrays(tmp_path):
    pairs = _corpus(1)
    store = write_store(tmp_path, Maker(pairs), _spec(pairs))
    low, ref = store.low, np.asarray(pairs.low)
    assert (low.shape, low.ndim, low.dtype, len(low)) == (ref.shape, 2, np.float32, ref.shape[0])
    np.testing.assert_array_equal(low[5], ref[5])
    np.testing.assert_array_equal(low[-1], ref[-1])
    np.testing.assert_array_equal(low[2:30:4], ref[2:30:4])
    np.testing.assert_array_equal(low[[7, 1, 7, 20]], ref[[7, 1, 7, 20]])
    np.testing.assert_array_equal(low[4:9, 2], ref[4:9, 2])
    np.testing.assert_array_equal(np.stack(list(low)), ref)
    assert store.tokens[3] == pairs.tokens[3] and list(store.tokens[[4, 0]]) == list(pairs.tokens[[4, 0]])
    with pytest.raises(IndexError):
        low[len(ref)]
    with pytest.raises(IndexError):
        low[np.ones(3, dtype=bool)]


def test_iter_documents_and_torch(tmp_path):
    torch = pytest.importorskip("torch")
    pairs = _corpus(2)
    store = write_store(tmp_path, Maker(pairs), _spec(pairs))
    batches = list(store.iter_documents(4, shuffle=True, random_state=0))
    docs = np.concatenate([b.extra["docs"] for b in batches])
    assert [b.n_docs for b in batches] == [4, 4, 3] and sorted(docs.tolist()) == list(range(N_DOCS))
    assert not np.array_equal(docs, np.arange(N_DOCS))  # shuffled
    again = np.concatenate([b.extra["docs"] for b in store.iter_documents(4, shuffle=True, random_state=0)])
    np.testing.assert_array_equal(docs, again)
    for batch in batches:
        _assert_same(batch, pairs.take(batch.extra["docs"]))
    for tb in store.iter_torch("cpu", batch_docs=5, shuffle=True, random_state=1):
        ref = pairs.take(tb.docs)
        assert tb.low.dtype == torch.float32 and tb.offsets.dtype == torch.int64
        np.testing.assert_array_equal(tb.low.numpy(), ref.low)
        np.testing.assert_array_equal(tb.high.numpy(), ref.high)
        np.testing.assert_array_equal(tb.offsets.numpy(), ref.offsets)
    with pytest.raises(ValueError, match="batch_docs"):
        next(store.iter_documents(0))


@pytest.mark.cuda
def test_iter_torch_pins_and_copies_to_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pairs = _corpus(3)
    for dtype in ("float32", "bfloat16"):
        store = write_store(tmp_path / dtype, Maker(pairs), _spec(pairs, dtype=dtype))
        for tb in store.iter_torch("cuda", batch_docs=4):
            assert tb.low.is_cuda and tb.low.dtype == torch.float32
            ref = store.take(tb.docs)
            np.testing.assert_array_equal(tb.low.cpu().numpy(), ref.low)
            np.testing.assert_array_equal(tb.high.cpu().numpy(), ref.high)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_storage(tmp_path, dtype):
    torch = pytest.importorskip("torch")
    pairs = _corpus(4)
    store = write_store(tmp_path / dtype, Maker(pairs), _spec(pairs, dtype=dtype))
    full = write_store(tmp_path / "f32", Maker(pairs), _spec(pairs))
    if dtype == "bfloat16":
        expected = torch.from_numpy(np.asarray(pairs.low)).to(torch.bfloat16).float().numpy()
        assert store.low.dtype == np.float32  # NumPy has no bfloat16: read back as float32
    else:
        expected = np.asarray(pairs.low).astype(np.float16)
        assert store.low.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(store.low), expected)
    assert not np.array_equal(np.asarray(store.low, dtype=np.float32), np.asarray(pairs.low))  # really rounded
    np.testing.assert_allclose(np.asarray(store.high, dtype=np.float32), pairs.high, rtol=1e-2, atol=1e-2)
    half = sum(p.stat().st_size for p in store.path.glob("*.safetensors"))
    whole = sum(p.stat().st_size for p in full.path.glob("*.safetensors"))
    saved = pairs.n_tokens * (D_LOW + D_HIGH) * 2  # two bytes per activation, apart from header padding
    assert abs((whole - half) - saved) <= 16 * store.n_shards
    for tb in store.iter_torch("cpu", batch_docs=6):
        np.testing.assert_array_equal(tb.low.numpy(), np.asarray(store.take(tb.docs).low, dtype=np.float32))


def test_pickle_reopens_the_folder(tmp_path):
    pairs = _corpus(5)
    store = write_store(tmp_path, Maker(pairs), _spec(pairs))
    blob = pickle.dumps(store)
    assert len(blob) < 2000  # the path, not the arrays
    _assert_same(pickle.loads(blob), pairs)


def test_manifest_records_what_the_store_holds(tmp_path):
    pairs = _corpus(6)
    write_store(tmp_path, Maker(pairs), _spec(pairs, model_revision="abc", settings={"max_length": 7}))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == "clvqlearn.LayerPairStore" and manifest["format_version"] == 2
    assert (manifest["model_name"], manifest["model_revision"], manifest["layers"]) == ("toy", "abc", [1, 2])
    assert (manifest["widths"], manifest["dtype"], manifest["settings"]) == ([5, 4], "float32", {"max_length": 7})
    assert (manifest["n_docs"], manifest["shard_size"], manifest["n_shards"]) == (N_DOCS, SHARD, 4)
    assert [s["n_docs"] for s in manifest["shards"]] == [3, 3, 3, 2]
    assert [s["n_tokens"] for s in manifest["shards"]] == [pairs[a : a + 3].n_tokens for a in (0, 3, 6, 9)]
    assert manifest["n_tokens"] == pairs.n_tokens


# ----------------------------------------------------------------------------- ranks
def test_rank_split_equals_one_process(tmp_path):
    pairs = _corpus(7)
    one = write_store(tmp_path / "one", Maker(pairs), _spec(pairs))
    makers = [Maker(pairs), Maker(pairs)]
    assert write_store(tmp_path / "two", makers[1], _spec(pairs), rank=1, world_size=2, wait=False) is None
    assert makers[1].calls == [3, 9]  # shards 1 and 3
    with pytest.raises(ValueError, match="incomplete.*shard-00000"):
        open_store(tmp_path / "two")
    two = write_store(tmp_path / "two", makers[0], _spec(pairs), rank=0, world_size=2)
    assert makers[0].calls == [0, 6]
    _assert_same(two, one)
    for name in ("shard-00000.safetensors", "shard-00003.safetensors"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_a_finished_rank_waits_for_the_others(tmp_path, monkeypatch):
    pairs = _corpus(8)
    monkeypatch.setattr(store_writer, "_POLL_S", 0.01)
    gate, results = threading.Event(), {}

    def slow(start, stop):
        gate.wait()
        return pairs[start:stop]

    worker = threading.Thread(
        target=lambda: results.update(one=write_store(tmp_path, slow, _spec(pairs), rank=1, world_size=2))
    )
    worker.start()
    timer = threading.Timer(0.2, gate.set)
    timer.start()
    zero = write_store(tmp_path, Maker(pairs), _spec(pairs), rank=0, world_size=2)  # returns only when 1 is done
    worker.join()
    _assert_same(zero, pairs)
    _assert_same(results["one"], pairs)


def test_distributed_rank_reads_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert tuple(store_writer.distributed_rank()) == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4"):
        store_writer.distributed_rank()
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK='zero'"):
        store_writer.distributed_rank()


# ----------------------------------------------------------------------------- resume and refusal
def test_interrupted_write_resumes_after_finished_shards(tmp_path):
    pairs = _corpus(9)
    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path, Maker(pairs, fail_at=6), _spec(pairs))
    with pytest.raises(ValueError, match=r"2 of 4 shards.*shard-00002.*resume"):
        open_store(tmp_path)
    first = (tmp_path / "shard-00000.safetensors").stat()
    maker = Maker(pairs)
    store = write_store(tmp_path, maker, _spec(pairs))
    assert maker.calls == [6, 9]
    assert (tmp_path / "shard-00000.safetensors").stat().st_mtime_ns == first.st_mtime_ns
    _assert_same(store, pairs)
    maker = Maker(pairs)
    write_store(tmp_path, maker, _spec(pairs))
    assert maker.calls == []  # a finished store is not rewritten


def test_shard_without_sidecar_is_redone(tmp_path):
    pairs = _corpus(10)
    write_store(tmp_path, Maker(pairs), _spec(pairs))
    (tmp_path / "shard-00001.json").unlink()  # killed between the shard's rename and its sidecar's
    with pytest.raises(ValueError, match="shard-00001"):
        open_store(tmp_path)
    maker = Maker(pairs)
    _assert_same(write_store(tmp_path, maker, _spec(pairs)), pairs)
    assert maker.calls == [3]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"model_name": "other"}, "model_name: stored 'toy', now 'other'"),
        ({"layers": (1, 3)}, "layers: stored [1, 2], now [1, 3]"),
        ({"dtype": "bfloat16"}, "dtype: stored 'float32', now 'bfloat16'"),
        ({"texts_sha256": "1" * 64}, "input texts"),
        ({"settings": {"max_length": 9}}, "max_length: stored 7, now 9"),
        ({"shard_size": 4}, "shard_size: stored 3, now 4"),
    ],
)
def test_refuses_other_settings_and_leaves_the_store_untouched(tmp_path, change, words):
    pairs = _corpus(11)
    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path, Maker(pairs, fail_at=6), _spec(pairs, settings={"max_length": 7}))
    before = _files(tmp_path)
    maker = Maker(pairs)
    spec = _spec(pairs, **{"settings": {"max_length": 7}, **change})
    with pytest.raises(ValueError, match="other settings") as info:
        write_store(tmp_path, maker, spec)
    assert words in str(info.value) and "Nothing was written" in str(info.value)
    assert maker.calls == [] and _files(tmp_path) == before


def test_refuses_a_folder_that_is_not_a_store(tmp_path):
    pairs = _corpus(12)
    pairs.save(tmp_path / "saved")
    with pytest.raises(FileExistsError, match="not an activation store"):
        write_store(tmp_path / "saved", Maker(pairs), _spec(pairs))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_store(tmp_path / "file", Maker(pairs), _spec(pairs))


def test_make_shard_must_fit_the_spec(tmp_path):
    pairs = _corpus(13)
    with pytest.raises(ValueError, match="expects 3 documents"):
        write_store(tmp_path, lambda a, b: pairs[a : b + 1], _spec(pairs))
    with pytest.raises(TypeError, match="must return LayerPairs"):
        write_store(tmp_path, lambda a, b: np.zeros((3, 9)), _spec(pairs))
    assert _names(tmp_path) == ["manifest.json"]


# ----------------------------------------------------------------------------- damaged stores, full disks
def test_truncated_shard_is_named_and_redone(tmp_path):
    pairs = _corpus(14)
    write_store(tmp_path, Maker(pairs), _spec(pairs))
    shard = tmp_path / "shard-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match=r"shard-00002\.safetensors .* damaged.*bytes on disk.*truncated"):
        open_store(tmp_path)
    maker = Maker(pairs)
    _assert_same(write_store(tmp_path, maker, _spec(pairs)), pairs)
    assert maker.calls == [6]


def test_damaged_header_is_named(tmp_path):
    pairs = _corpus(15)
    write_store(tmp_path, Maker(pairs), _spec(pairs))
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:20] = b"not json {{{"
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"shard-00001\.safetensors .* damaged: its header is not valid JSON"):
        open_store(tmp_path)


def test_missing_manifest(tmp_path):
    pairs = _corpus(16)
    write_store(tmp_path / "s", Maker(pairs), _spec(pairs))
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        LayerPairs.open(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LayerPairs.open(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        LayerPairs.open(tmp_path / "bad")
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps({"format": "clvqlearn.LayerPairStore",
                                                                 "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99.*Upgrade"):
        LayerPairs.open(tmp_path / "bad")



@pytest.mark.parametrize(("content", "match"), [
    ("{not json", "manifest.json is not valid JSON"),
    ("[1, 2]", "manifest.json: expected a JSON object, got list"),
    (json.dumps({"format": "clvqlearn.LayerPairs", "version": 1}),
     "holds format 'clvqlearn.LayerPairs', not 'clvqlearn.LayerPairStore'"),
    (json.dumps({"format": "clvqlearn.LayerPairStore", "format_version": "2"}),
     "manifest.json: the format version must be a non-negative integer"),
])
def test_a_manifest_of_another_kind_is_named_by_reader_and_writer(tmp_path, content, match):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        LayerPairs.open(tmp_path)
    pairs = _corpus()
    with pytest.raises(ValueError, match=match):
        write_store(tmp_path, Maker(pairs), _spec(pairs))
    assert _names(tmp_path) == ["manifest.json"] and (tmp_path / "manifest.json").read_text() == content


def test_full_disk_mid_shard_leaves_nothing_half_written(tmp_path, monkeypatch):
    pairs = _corpus(17)
    real_fsync, seen = os.fsync, []

    def fsync(fd):  # the disk fills while the second shard is being flushed
        name = os.readlink(f"/proc/self/fd/{fd}")
        seen.append(name)
        if ".shard-00001.safetensors.tmp-" in name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(store_writer.os, "fsync", fsync)
    with pytest.raises(OSError, match=r"shard-00001.*disk is full.*Nothing half-written.*resumes") as info:
        write_store(tmp_path, Maker(pairs), _spec(pairs))
    assert info.value.errno == errno.ENOSPC
    assert any(".shard-00001.safetensors.tmp-" in s for s in seen)  # a real temporary file existed
    assert _names(tmp_path) == ["manifest.json", "shard-00000.json", "shard-00000.safetensors"]
    with pytest.raises(ValueError, match="incomplete"):
        open_store(tmp_path)
    monkeypatch.setattr(store_writer.os, "fsync", real_fsync)
    maker = Maker(pairs)
    _assert_same(write_store(tmp_path, maker, _spec(pairs)), pairs)
    assert maker.calls == [3, 6, 9]


def test_sidecar_failure_discards_the_shard(tmp_path, monkeypatch):
    pairs = _corpus(18)
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("shard-00000.json"):
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(store_writer.os, "replace", replace)
    with pytest.raises(OSError, match="shard-00000.*Input/output error"):
        write_store(tmp_path, Maker(pairs), _spec(pairs))
    assert _names(tmp_path) == ["manifest.json"]


def test_read_only_store_folder(tmp_path, monkeypatch):
    pairs = _corpus(19)
    write_store(tmp_path / "done", Maker(pairs), _spec(pairs))

    def read_only(file, mode="r", *args, **kwargs):  # what a read-only file system does, even for root
        if any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system")
        return open(file, mode, *args, **kwargs)

    import clvqlearn._folders as folders  # where the store's files are written (write_file_atomic)

    for module in (store_writer, folders):
        monkeypatch.setattr(module, "open", read_only, raising=False)
    with pytest.raises(OSError, match=r"manifest.json.*Read-only file system \(the store folder is read-only"):
        write_store(tmp_path / "s", Maker(pairs), _spec(pairs))
    assert _names(tmp_path / "s") == []
    maker = Maker(pairs)  # a finished store on a read-only disk: resuming writes nothing, reading works
    _assert_same(write_store(tmp_path / "done", maker, _spec(pairs)), pairs)
    assert maker.calls == []


# ----------------------------------------------------------------------------- estimators
def test_estimators_fit_a_store_and_refuse_another_layer_pair(tmp_path):
    pairs = _corpus(20, n_docs=30)
    store = write_store(tmp_path / "a", Maker(pairs), _spec(pairs, shard_size=7))
    est = KMeansConcepts(k=4, random_state=0).fit(store)
    ref = KMeansConcepts(k=4, random_state=0).fit(pairs)
    # a store is streamed through mini-batch k-means: other clusters, as good a fit
    assert est.labels_ is None and est.counts_.sum() == pairs.n_tokens
    assert abs(est.score(store) - ref.score(pairs)) < 0.1
    other = _corpus(21, n_docs=30, layers=(1, 3))
    wrong = write_store(tmp_path / "b", Maker(other), _spec(other, shard_size=7))
    with pytest.raises(ValueError, match=r"layers \(1, 3\) of model 'toy'.*fitted on layers \(1, 2\) of model 'toy'"):
        est.predict(wrong)
    renamed = _corpus(20, n_docs=30, model="another")
    wrong = write_store(tmp_path / "c", Maker(renamed), _spec(renamed, shard_size=7))
    with pytest.raises(ValueError, match="model 'another'.*model 'toy'"):
        est.transform(wrong)


# ----------------------------------------------------------------------------- the extractor
TEXTS = [
    "The cat sat on the mat.", "Stocks fell sharply on Monday after the report.", "The team won.",
    "Scientists announced a new space mission to study Mars and its moons.", "Oil prices rose.",
    "A second team of rocketeers announced the first launch date.", "Unions say they are disappointed.",
]


def test_extractor_writes_a_store_equal_to_memory(tiny_bert_dir, tmp_path):
    kw = dict(layers=(1, 3), max_length=16, batch_size=2)
    memory = LayerPairExtractor(os.fspath(tiny_bert_dir), **kw).fit_transform(TEXTS)
    ext = LayerPairExtractor(os.fspath(tiny_bert_dir), store=tmp_path / "s", shard_size=3, **kw)
    store = ext.fit_transform(TEXTS)
    assert isinstance(store, ShardedLayerPairs) and store.n_shards == 3
    _assert_same(store, memory, exact=False)  # other batch paddings: equal up to float rounding
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["model_name"] == os.fspath(tiny_bert_dir) and manifest["layers"] == [1, 3]
    assert manifest["widths"] == [32, 32] and manifest["texts_sha256"] == texts_fingerprint(TEXTS)
    assert manifest["settings"]["max_length"] == 16 and manifest["settings"]["batch_size"] == 2
    stamp = (tmp_path / "s" / "shard-00001.safetensors").stat().st_mtime_ns
    _assert_same(ext.transform(TEXTS), store)  # resumed: nothing to do
    assert (tmp_path / "s" / "shard-00001.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"layers: stored \[1, 3\], now \[1, 2\]"):
        LayerPairExtractor(os.fspath(tiny_bert_dir), store=tmp_path / "s", shard_size=3,
                           **dict(kw, layers=(1, 2))).fit_transform(TEXTS)
    with pytest.raises(ValueError, match="max_length: stored 16, now 12"):
        LayerPairExtractor(os.fspath(tiny_bert_dir), store=tmp_path / "s", shard_size=3,
                           **dict(kw, max_length=12)).fit_transform(TEXTS)
    with pytest.raises(ValueError, match="input texts"):
        ext.transform(TEXTS[::-1])


def test_extractor_bfloat16_store(tiny_bert_dir, tmp_path):
    torch = pytest.importorskip("torch")
    kw = dict(layers=(0, 2), max_length=16, batch_size=4)
    with pytest.raises(ValueError, match="bfloat16' needs store"):
        LayerPairExtractor(os.fspath(tiny_bert_dir), storage_dtype="bfloat16", **kw).fit(TEXTS)
    full = LayerPairExtractor(os.fspath(tiny_bert_dir), store=tmp_path / "f", shard_size=4, **kw).fit_transform(TEXTS)
    half = LayerPairExtractor(os.fspath(tiny_bert_dir), store=tmp_path / "h", shard_size=4, storage_dtype="bfloat16",
                              **kw).fit_transform(TEXTS)
    expected = torch.from_numpy(np.asarray(full.high)).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(half.high), expected)
    assert half.extra["storage_dtype"] == "bfloat16"
