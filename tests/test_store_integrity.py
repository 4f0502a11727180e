"""Store integrity (sidecars, checksums, manifest problems) and one writer per rank (issue 23, item 2)."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from clvqlearn import LayerPairs
from clvqlearn.data import StoreSpec, open_store, store_columns, store_writer, write_store

N_DOCS, SHARD, D_LOW, D_HIGH = 11, 3, 24, 16
MANIFEST_PROBLEM = r"manifest {}manifest\.json is damaged or was edited: {}.*not at fault, do not delete them"


def _corpus(layers=(1, 2), model="toy"):
    """Documents of 2..6 tokens; shards of a few kilobytes."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 7, size=N_DOCS)
    n = int(lengths.sum())
    return LayerPairs(
        low=rng.normal(size=(n, D_LOW)).astype(np.float32), high=rng.normal(size=(n, D_HIGH)).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(lengths)]), token_ids=rng.integers(0, 1000, size=n),
        tokens=np.array(["tok"] * n, dtype=object), layers=layers, model_name=model,
    )


def _spec(pairs, **kw):
    values = dict(model_name=pairs.model_name, layers=pairs.layers, widths=(D_LOW, D_HIGH), n_docs=N_DOCS,
                  shard_size=SHARD, texts_sha256="0" * 64)
    return StoreSpec(**dict(values, **kw))


def _write(folder, pairs=None, **kw):
    pairs = _corpus() if pairs is None else pairs
    write_store(folder, lambda a, b: pairs[a:b], _spec(pairs, **kw))
    return pairs


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _problem(folder, why):
    return MANIFEST_PROBLEM.format(f"{folder}/".replace("\\", "\\\\"), why)


def _swap(a, b):
    tmp = a.with_name("swap.tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


# ----------------------------------------------------------------------------- manifest problems
def test_n_shards_edited_is_a_manifest_problem(tmp_path):
    _write(tmp_path)
    _edit_json(tmp_path / "manifest.json", n_shards=2)  # 4 shards of 3 documents; silently fitted on 6 before
    with pytest.raises(ValueError, match=_problem(tmp_path, r"the field 'n_shards' is 2, but n_docs=11 and "
                                                            r"shard_size=3 make 4 shards")) as info:
        open_store(tmp_path)
    assert "Delete it" not in str(info.value)


def test_n_docs_edited_to_match_is_a_manifest_problem(tmp_path):
    _write(tmp_path)
    _edit_json(tmp_path / "manifest.json", n_docs=6, n_shards=2)
    with pytest.raises(ValueError, match=_problem(tmp_path, r"it says n_shards=2 \(n_docs=6, shard_size=3\), but "
                                                            r"the folder also holds shard-00002.json")):
        LayerPairs.open(tmp_path)
    for k in (2, 3):  # without the extra shards, what the shards recorded still disagrees
        for ext in ("json", "safetensors"):
            (tmp_path / f"shard-0000{k}.{ext}").unlink()
    with pytest.raises(ValueError, match=_problem(tmp_path, ".*n_docs: the manifest says 6, the shards were written "
                                                            "with 11")):
        LayerPairs.open(tmp_path)


@pytest.mark.parametrize(
    "change, why",
    [
        ({"dtype": "int8"}, r"the field 'dtype' is 'int8', expected one of \['float32', 'float16', 'bfloat16'\]"),
        ({"widths": None}, "the field 'widths' is missing"),
        ({"layers": "1,2"}, r"the field 'layers' is '1,2', expected a \[low, high\] pair of integers"),
        ({"shard_size": 0}, "the field 'shard_size' is 0, expected a positive integer"),
    ],
)
def test_bad_manifest_fields_are_named(tmp_path, change, why):
    _write(tmp_path)
    _edit_json(tmp_path / "manifest.json", **change)  # was a bare KeyError (or a wrong read)
    with pytest.raises(ValueError, match=_problem(tmp_path, why)):
        open_store(tmp_path)


@pytest.mark.parametrize(
    "change, why",
    [
        ({"layers": [1, 3]}, r"layers: the manifest says \[1, 3\], the shards were written with \[1, 2\]"),
        ({"model_name": "gpt2"}, "model_name: the manifest says 'gpt2', the shards were written with 'toy'"),
        ({"settings": {"max_length": 9}}, "settings: the manifest says"),
    ],
)
def test_forged_identity_is_a_manifest_problem(tmp_path, change, why):
    _write(tmp_path)
    _edit_json(tmp_path / "manifest.json", **change)
    with pytest.raises(ValueError, match=_problem(tmp_path, "it disagrees with what its shards recorded when they "
                                                            f"were written: {why}")):
        open_store(tmp_path)


def test_forged_manifest_is_not_resumed(tmp_path):
    pairs = _write(tmp_path)
    (tmp_path / "shard-00003.json").unlink()  # an unfinished shard: a resume would redo it
    _edit_json(tmp_path / "manifest.json", layers=[1, 3])
    forged = LayerPairs(low=pairs.low, high=pairs.high, offsets=pairs.offsets, layers=(1, 3), model_name="toy")
    calls = []

    def make_shard(a, b):
        calls.append(a)
        return forged[a:b]

    with pytest.raises(ValueError, match=_problem(tmp_path, r".*layers: the manifest says \[1, 3\]")):
        write_store(tmp_path, make_shard, _spec(forged))
    assert calls == []  # nothing mixed into the store


def test_format_version_1_store_is_read_and_checked(tmp_path):
    """A store written before sidecars recorded checksums and store fields: read as before, layers still checked."""
    pairs = _write(tmp_path)
    _edit_json(tmp_path / "manifest.json", format_version=1)
    for k in range(4):
        _edit_json(tmp_path / f"shard-0000{k}.json", format_version=None, sha256=None, store=None)
    np.testing.assert_array_equal(np.asarray(open_store(tmp_path).verify()), np.asarray(pairs))
    _edit_json(tmp_path / "manifest.json", layers=[0, 2])
    with pytest.raises(ValueError, match=_problem(tmp_path, r".*layers: the manifest says \[0, 2\], the shards "
                                                            r"were written with \[1, 2\]")):
        open_store(tmp_path)


# ----------------------------------------------------------------------------- misplaced and foreign shards
@pytest.mark.parametrize("copy", [False, True], ids=["swapped", "copied"])
def test_swapped_or_copied_shards_are_named(tmp_path, copy):
    _write(tmp_path)
    for ext in ("safetensors", "json"):  # the pair of files, sidecar included: opened silently before
        a, b = tmp_path / f"shard-00001.{ext}", tmp_path / f"shard-00002.{ext}"
        shutil.copyfile(a, b) if copy else _swap(a, b)
    wrong = "shard-00002.json .* records shard 1" if copy else "shard-00001.json .* records shard 2"
    with pytest.raises(ValueError, match=f"{wrong}, but it is at the place of shard {2 if copy else 1}: shard "
                                         "files were renamed, swapped or copied"):
        open_store(tmp_path)


def test_a_shard_of_another_store_is_named(tmp_path):
    _write(tmp_path / "a")
    _write(tmp_path / "b", _corpus(layers=(1, 3)))
    for ext in ("safetensors", "json"):
        shutil.copyfile(tmp_path / "b" / f"shard-00002.{ext}", tmp_path / "a" / f"shard-00002.{ext}")
    with pytest.raises(ValueError, match=r"holds shards written for another store: shard-00002.safetensors "
                                         r"\(layers: the manifest says \[1, 2\], they were written with \[1, 3\]\)"):
        open_store(tmp_path / "a")


# ----------------------------------------------------------------------------- checksums
def test_overwritten_bytes_are_found_when_the_shard_is_read(tmp_path, monkeypatch):
    pairs = _write(tmp_path)
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    assert len(data) > 2000
    data[-1200:-200] = np.random.default_rng(1).integers(0, 256, size=1000, dtype=np.uint8).tobytes()
    shard.write_bytes(bytes(data))  # same size: fitted silently before
    hashed = []
    real = store_columns._file_sha256
    monkeypatch.setattr(store_columns, "_file_sha256", lambda path: hashed.append(path.name) or real(path))
    store = open_store(tmp_path)  # the cheap check reads no shard's bytes
    assert hashed == []
    np.testing.assert_array_equal(np.asarray(store[:3].low), pairs[:3].low)  # shard 0 is fine
    assert hashed == ["shard-00000.safetensors"]
    damaged = r"shard-00001\.safetensors .* damaged: its bytes differ from the SHA-256 its sidecar recorded"
    with pytest.raises(ValueError, match=damaged):
        np.asarray(store)
    with pytest.raises(ValueError, match=damaged):
        open_store(tmp_path).verify()
    np.asarray(store[:3].low)
    assert hashed.count("shard-00000.safetensors") == 2  # once per opened store


def test_a_shard_deleted_after_opening_is_named(tmp_path):
    _write(tmp_path)
    store = open_store(tmp_path)
    (tmp_path / "shard-00002.safetensors").unlink()
    with pytest.raises(OSError, match=r"shard-00002.safetensors .* deleted or moved after the store was opened"):
        np.asarray(store)


# ----------------------------------------------------------------------------- concurrent writers
def _in_thread(target, seconds=20.0):
    """Run ``target`` in a thread; return what it raised (it must end within ``seconds``, not hang)."""
    result = {}

    def run():
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the writer hangs"
    return result.get("error")


def test_a_second_writer_is_refused_at_once(tmp_path):
    pairs, gate, started = _corpus(), threading.Event(), threading.Event()

    def slow(a, b):
        started.set()
        gate.wait(20)
        return pairs[a:b]

    first = threading.Thread(target=lambda: write_store(tmp_path, slow, _spec(pairs)), daemon=True)
    first.start()
    assert started.wait(20)
    calls = []
    with pytest.raises(RuntimeError, match=r"another process is writing the activation store .* as rank 0.*"
                                           r"Nothing was written.*\.writer-rank-00000\.lock"):
        write_store(tmp_path, lambda a, b: calls.append(a) or pairs[a:b], _spec(pairs))
    assert calls == []
    gate.set()
    first.join(20)
    np.testing.assert_array_equal(np.asarray(open_store(tmp_path)), np.asarray(pairs))


def test_a_writer_in_another_process_is_refused(tmp_path):
    pairs = _corpus()
    tmp_path.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import filelock, sys; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
                               "print('held', flush=True); sys.stdin.read()",
         str(tmp_path / ".writer-rank-00000.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="another process is writing"):
            write_store(tmp_path, lambda a, b: pairs[a:b], _spec(pairs))
    finally:
        holder.communicate("", timeout=20)  # the holder ends: the system releases its lock
    assert len(write_store(tmp_path, lambda a, b: pairs[a:b], _spec(pairs))) == N_DOCS


def test_a_shard_deleted_while_writing_is_an_error_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(store_writer, "_POLL_S", 0.01)
    pairs = _corpus()

    def make_shard(a, b):
        if a == 9:  # another process deletes a finished shard's data file
            (tmp_path / "shard-00000.safetensors").unlink()
        return pairs[a:b]

    error = _in_thread(lambda: write_store(tmp_path, make_shard, _spec(pairs)))
    assert isinstance(error, RuntimeError)
    assert "shard-00000.safetensors" in str(error) and "another process deleted or rewrote it" in str(error)


def test_a_rank_that_never_runs_is_an_error_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(store_writer, "_POLL_S", 0.01)
    monkeypatch.setattr(store_writer, "_ABANDONED_S", 0.1)
    pairs = _corpus()
    error = _in_thread(lambda: write_store(tmp_path, lambda a, b: pairs[a:b], _spec(pairs), rank=0, world_size=2))
    assert isinstance(error, RuntimeError)
    assert "shards of rank 1 (shard-00001.safetensors, shard-00003.safetensors)" in str(error)
    assert "no process has been writing as rank 1" in str(error)
    assert len(write_store(tmp_path, lambda a, b: pairs[a:b], _spec(pairs))) == N_DOCS  # resumed by one process


def test_a_running_rank_is_waited_for(tmp_path, monkeypatch):
    monkeypatch.setattr(store_writer, "_POLL_S", 0.01)
    monkeypatch.setattr(store_writer, "_ABANDONED_S", 0.0)  # only a free lock counts as abandoned
    pairs, gate = _corpus(), threading.Event()

    def slow(a, b):
        gate.wait(20)
        return pairs[a:b]

    one = threading.Thread(target=lambda: write_store(tmp_path, slow, _spec(pairs), rank=1, world_size=2))
    one.start()
    threading.Timer(0.3, gate.set).start()
    error = _in_thread(lambda: write_store(tmp_path, lambda a, b: pairs[a:b], _spec(pairs), rank=0, world_size=2))
    one.join(20)
    assert error is None


def test_a_finished_store_on_a_read_only_disk_needs_no_lock(tmp_path, monkeypatch):
    pairs = _write(tmp_path)

    class ReadOnlyLock:  # what filelock meets on a read-only file system: the lock file cannot be created
        def __init__(self, *args, **kwargs):
            pass

        def acquire(self):
            raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store_writer, "FileLock", ReadOnlyLock)
    calls = []
    store = write_store(tmp_path, lambda a, b: calls.append(a) or pairs[a:b], _spec(pairs))
    assert calls == [] and len(store) == N_DOCS
