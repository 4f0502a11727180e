"""Checkpoints and training callbacks of the torch estimators (issue 26, item 4).

The resume test kills a fit with SIGKILL after its first checkpoint, in a
subprocess, then runs the same ``fit`` to the end: the model equals an
uninterrupted fit's (data order, sampling, dropout and Adam all resume
where they were).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_validate

from clvqlearn import CrossLayerVQ, LayerPairs, SingleLayerVQ, SparseAutoencoder, read_model_card
from clvqlearn.concepts import _checkpoint
from clvqlearn.concepts._checkpoint import Checkpointer
from clvqlearn.concepts._distributed import Comm
from clvqlearn.concepts.callbacks import TensorBoardLogger, TrainingCallback, WandbLogger

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def pairs(n_docs=120, seed=0, d=6) -> LayerPairs:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, size=n_docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    low = rng.normal(size=(offsets[-1], d)).astype(np.float32)
    high = np.tanh(low @ rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32)
    return LayerPairs(low=low, high=high, offsets=offsets, layers=(1, 2), model_name="synthetic")


def make(case: str, **params):
    """The estimators the tests checkpoint: dropout, sampling, dead codes; a TopK SAE with AuxK."""
    if case == "vq":
        return CrossLayerVQ(**{**dict(k=8, top_k=3, encoder="linear", decoder="transformer-codes", decoder_layers=1,
                                      decoder_heads=2, decoder_ff=16, dropout=0.1, max_epochs=3, batch_size=6,
                                      warmup_steps=5, dead_code_threshold=0.5, device="cpu", random_state=0),
                               **params})
    return SparseAutoencoder(**{**dict(k=12, activation="topk", top_k=3, dead_latents="auxk", batch_size=40,
                                       max_epochs=3, device="cpu", random_state=0), **params})


def fitted(model) -> dict:
    if isinstance(model, SparseAutoencoder):
        arrays = {n: getattr(model, n) for n in ("components_", "encoder_weights_", "encoder_bias_",
                                                 "tokens_since_fired_", "usage_")}
    else:
        arrays = {**model.network_state_, "usage_": model.usage_, "source_means_": model.source_means_}
    return {**arrays, "loss_curve_": np.asarray(model.loss_curve_), "n_steps_": np.asarray(model.n_steps_),
            "validation_curve_": np.asarray(model.validation_curve_)}


def fit_folders(root: Path) -> list[Path]:
    """The fits' folders under a ``checkpoint_dir`` (one per fingerprint)."""
    return sorted(p.parent for p in Path(root).glob("*/checkpoint.json"))


def pointer(root: Path) -> Path:
    """``checkpoint.json`` of the only fit under ``root``."""
    folders = fit_folders(root)
    assert len(folders) == 1, folders
    return folders[0] / "checkpoint.json"


def assert_same_fit(one, other) -> None:
    a, b = fitted(one), fitted(other)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, atol=1e-7, err_msg=name)


class Slow(TrainingCallback):
    """Slows every step, so that the parent process kills the fit in its middle."""

    log_every_n_steps = 1

    def on_step_end(self, step, metrics):
        time.sleep(0.1)


CHILD = """
import sys
sys.path.insert(0, {here!r})
import test_checkpoints as t
t.make({case!r}, checkpoint_dir=sys.argv[1], checkpoint_every=4, callbacks=[t.Slow()]).fit(t.pairs())
"""


@pytest.mark.parametrize("case", ["vq", "sae"])
def test_a_fit_killed_with_sigkill_resumes_to_the_uninterrupted_model(case, tmp_path):
    folder = tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO),
                                                                                os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(here=str(HERE), case=case), str(folder)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not fit_folders(folder):
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    saved = json.loads(pointer(folder).read_text())["state"]
    assert not saved["finished"] and 0 < saved["n_steps"] < 30  # killed mid-fit
    with pytest.warns(UserWarning, match=r"resumes from the checkpoint in .*after optimiser step"):
        resumed = make(case, checkpoint_dir=folder, checkpoint_every=4).fit(pairs())
    assert_same_fit(make(case).fit(pairs()), resumed)
    assert json.loads(pointer(folder).read_text())["state"]["finished"]  # the same folder, finished


@pytest.mark.parametrize("stop_at", [5, 20, 40])
def test_an_interrupted_fit_resumes_from_any_step(stop_at, tmp_path):
    """Interrupted in the first epoch, after an epoch end, in the last epoch (a callback raises; 18 steps an epoch)."""

    class Interrupt(TrainingCallback):
        log_every_n_steps = 1

        def on_step_end(self, step, metrics):
            if step == stop_at:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make("vq", checkpoint_dir=tmp_path, checkpoint_every=3, callbacks=[Interrupt()]).fit(pairs())
    with pytest.warns(UserWarning, match="resumes"):
        resumed = make("vq", checkpoint_dir=tmp_path, checkpoint_every=3).fit(pairs())
    assert_same_fit(make("vq").fit(pairs()), resumed)


def test_a_finished_checkpoint_returns_the_fit_without_training(tmp_path):
    first = make("sae", checkpoint_dir=tmp_path).fit(pairs())
    assert_same_fit(make("sae").fit(pairs()), first)  # writing checkpoints changes nothing
    with pytest.warns(UserWarning, match="a finished fit") as caught:
        again = make("sae", checkpoint_dir=tmp_path, callbacks=[Record()]).fit(pairs())
    assert [w.filename for w in caught if "finished" in str(w.message)] == [__file__]  # names the caller
    assert_same_fit(first, again)
    assert again.callbacks[0].epochs == []  # nothing trained


def same_offsets(low_shift=0.0, layers=(1, 2), model_name="synthetic") -> LayerPairs:
    """``pairs()`` with other activations, layers or model, and the same documents."""
    base = pairs()
    return LayerPairs(low=np.asarray(base.low) + np.float32(low_shift), high=np.asarray(base.high)[:, ::-1].copy()
                      if low_shift else base.high, offsets=base.offsets, layers=layers, model_name=model_name)


@pytest.mark.parametrize("other", [
    dict(layers=(4, 6)),                  # a layer sweep: the same texts, another layer pair
    dict(model_name="other-model"),       # the same texts through another model of equal width
    dict(low_shift=0.5),                  # other activations, the same documents and widths
])
def test_a_fit_of_another_layer_pair_model_or_data_never_resumes_a_checkpoint(other, tmp_path):
    first = make("sae", checkpoint_dir=tmp_path).fit(same_offsets())
    X = same_offsets(**other)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "resumes" warning: it trains
        second = make("sae", checkpoint_dir=tmp_path).fit(X)
    assert_same_fit(make("sae").fit(X), second)
    if "low_shift" in other:  # (the other cases hold the same numbers: a fresh fit gives the same model)
        assert not np.allclose(second.components_, first.components_)
    assert len(fit_folders(tmp_path)) == 2  # a folder each: neither resumed the other
    assert second.pairs_layers_ == tuple(other.get("layers", (1, 2)))


def test_the_fingerprint_names_the_model_the_layers_and_the_data():
    sae = make("sae").fit(same_offsets())
    base = sae._fit_fingerprint(sae._validate_input(same_offsets(), reset=False), False)
    assert (base["model"], base["layers"]) == ("synthetic", [1, 2])
    X = same_offsets(low_shift=1e-3)
    other = sae._fit_fingerprint(sae._validate_input(X, reset=False), False)
    assert other["offsets_sha1"] == base["offsets_sha1"] and other["data_sha1"] != base["data_sha1"]


def _store_fingerprint(folder, texts_sha256="0" * 64, shift=0.0, lazy=None):
    from clvqlearn.data import StoreSpec, write_store

    base = same_offsets(low_shift=shift)
    spec = StoreSpec("synthetic", (1, 2), (6, 6), n_docs=base.n_docs, shard_size=50, texts_sha256=texts_sha256)
    store = write_store(folder, lambda start, stop: base[start:stop], spec)
    sae = make("sae")
    X = lazy(base, folder) if lazy is not None else store
    return sae._fit_fingerprint(sae._validate_input(X, reset=True, fitting=True, stream=True), False)


def test_a_streamed_fit_is_fingerprinted_by_its_store(tmp_path):
    """A store by its manifest (texts' hash, settings, layers); a lazy view without one by a sample of documents."""
    from lazy_store import NpyStore
    from lazy_store import write_store as write_npy

    one = _store_fingerprint(tmp_path / "a")
    assert one == _store_fingerprint(tmp_path / "b")  # the same store elsewhere: the same fit
    assert one["data_sha1"] != _store_fingerprint(tmp_path / "c", texts_sha256="1" * 64)["data_sha1"]
    assert one["layers"] == [1, 2] and one["model"] == "synthetic"

    def npy(base, folder):
        return NpyStore(write_npy(folder / "npy", base))

    plain, shifted = (_store_fingerprint(tmp_path / name, shift=shift, lazy=npy)
                      for name, shift in (("d", 0.0), ("e", 0.5)))
    assert plain["offsets_sha1"] == shifted["offsets_sha1"] and plain["data_sha1"] != shifted["data_sha1"]


def test_a_checkpoint_of_another_fit_in_its_folder_is_refused(tmp_path):
    """Two fits never share a folder; a folder copied under another fit's name is refused, naming what differs."""
    make("sae", checkpoint_dir=tmp_path / "a").fit(pairs())
    make("sae", k=10, checkpoint_dir=tmp_path / "b").fit(pairs())
    (copied,) = fit_folders(tmp_path / "a")
    (target,) = fit_folders(tmp_path / "b")
    shutil.rmtree(target)
    shutil.copytree(copied, target)
    with pytest.raises(ValueError, match=r"checkpoint of another fit .*params.k: 12 -> 10"):
        make("sae", k=10, checkpoint_dir=tmp_path / "b").fit(pairs())


def test_the_folds_of_a_cross_validation_share_a_checkpoint_dir(tmp_path):
    """Each clone writes a folder of its own; running the same cross-validation again resumes each fold's."""
    model = make("sae", max_epochs=2, checkpoint_dir=tmp_path)
    first = cross_validate(model, pairs(), cv=2)
    assert len(fit_folders(tmp_path)) == 2
    assert all(json.loads(p.joinpath("checkpoint.json").read_text())["state"]["finished"]
               for p in fit_folders(tmp_path))
    with pytest.warns(UserWarning, match="a finished fit") as caught:
        again = cross_validate(model, pairs(), cv=2)
    assert len([w for w in caught if "finished fit" in str(w.message)]) == 2
    np.testing.assert_array_equal(again["test_score"], first["test_score"])
    plain = cross_validate(make("sae", max_epochs=2), pairs(), cv=2)
    np.testing.assert_allclose(first["test_score"], plain["test_score"], rtol=1e-6)


def test_a_damaged_checkpoint_is_named(tmp_path):
    make("sae", checkpoint_dir=tmp_path).fit(pairs())
    state = next(tmp_path.glob("*/state-*.safetensors"))
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"state-.*safetensors is not a readable safetensors file"):
        make("sae", checkpoint_dir=tmp_path).fit(pairs())


def _edit_state(file: Path, edit) -> None:
    meta = json.loads(file.read_text())
    edit(meta["state"])
    file.write_text(json.dumps(meta))


@pytest.mark.parametrize("edit", [
    lambda state: state.pop("finished"),                          # a key missing
    lambda state: state.update(epoch="two"),                      # a key of another type
    lambda state: state["optimizer"].pop("param_groups"),        # structures the resume cannot apply
    lambda state: state["module"].pop(sorted(state["module"])[0]),
    lambda state: state["estimator"].update(rng=[1, 2]),
], ids=["missing", "mistyped", "optimizer", "module", "rng"])
def test_an_edited_checkpoint_json_names_the_folder_to_delete(edit, tmp_path):
    make("sae", checkpoint_dir=tmp_path, max_epochs=1).fit(pairs())
    file = pointer(tmp_path)
    _edit_state(file, lambda state: state.update(finished=False))  # a fit to resume, not a finished one
    _edit_state(file, edit)
    with pytest.raises(ValueError, match=rf"checkpoint in {re.escape(str(file.parent))}.*(delete|Delete) it"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            make("sae", checkpoint_dir=tmp_path, max_epochs=1).fit(pairs())


class _Rank(Comm):
    """One rank of a 2-process group whose broadcasts go through ``box`` (rank 0 fills it, rank 1 reads it)."""

    def __init__(self, rank, box):
        super().__init__(rank, 2)
        self.box = box

    def broadcast_object(self, value):
        if self.rank == 0:
            self.box.append(value)
        return self.box[0]


@pytest.mark.parametrize("damage", ["json", "decode"])
def test_every_rank_raises_the_error_rank_0_met_reading_a_checkpoint(damage, tmp_path, monkeypatch):
    """Rank 0 sends any error it met (a KeyError included) to the others: no rank waits in a broadcast."""
    saver = Checkpointer(tmp_path, every=1, fingerprint={"fit": 1})
    saver.save({"n_steps": 1, "w": np.ones(3)})
    if damage == "json":
        (tmp_path / _checkpoint.POINTER).write_text(json.dumps({"format": _checkpoint.FORMAT_NAME, "n": 1}))
    else:
        monkeypatch.setattr(_checkpoint, "_decode", lambda *args: {}["missing"])  # a raw KeyError
    box: list = []
    errors = []
    for rank in (0, 1):
        with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}.*(delete|Delete) it") as caught:
            Checkpointer(tmp_path, every=1, fingerprint={"fit": 1}, comm=_Rank(rank, box)).load()
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and len(box) == 1 and box[0][0] == "error"


def test_a_write_killed_between_its_files_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    saver = Checkpointer(tmp_path, every=1, fingerprint={"fit": 1})
    saver.save({"n_steps": 1, "w": np.ones(3)})
    real = _checkpoint.write_file_atomic

    def dies_before_the_pointer(path, data, **options):
        if path.name == _checkpoint.POINTER:
            raise OSError("disk full")
        real(path, data, **options)

    monkeypatch.setattr(_checkpoint, "write_file_atomic", dies_before_the_pointer)
    with pytest.raises(OSError):
        saver.save({"n_steps": 2, "w": np.zeros(3)})
    monkeypatch.undo()
    back = Checkpointer(tmp_path, every=1, fingerprint={"fit": 1}).load()
    assert back["n_steps"] == 1 and back["w"].tolist() == [1.0, 1.0, 1.0]
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_partial_fit_writes_no_checkpoint(tmp_path):
    folder = tmp_path / "none"
    make("sae", checkpoint_dir=folder).partial_fit(pairs())
    assert not folder.exists()


@pytest.mark.parametrize("bad, error", [
    (dict(checkpoint_every=0), "checkpoint_every"),
    (dict(distributed="yes"), "distributed"),
    (dict(callbacks="tensorboard"), "callbacks"),
])
def test_training_settings_are_validated_in_fit(bad, error):
    with pytest.raises(ValueError, match=error):
        make("sae", **bad).fit(pairs())


def test_a_callback_needs_a_hook():
    with pytest.raises(TypeError, match=r"callbacks\[0\] is a int, which has none of the hooks"):
        make("sae", callbacks=[3]).fit(pairs())


class Record(TrainingCallback):
    log_every_n_steps = 5

    def __init__(self):
        self.begin, self.steps, self.epochs, self.end = None, [], [], None

    def on_train_begin(self, info):
        self.begin = info

    def on_step_end(self, step, metrics):
        self.steps.append((step, metrics))

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, metrics))

    def on_train_end(self, info):
        self.end = info


@pytest.mark.parametrize("case, parts, model_metrics", [
    ("vq", {"mse", "commitment"}, {"perplexity", "active_codes"}),
    ("sae", {"mse", "l1", "l0"}, {"dead_latents"}),
])
def test_callbacks_see_the_loss_its_parts_and_the_model(case, parts, model_metrics):
    record = Record()
    model = make(case, callbacks=[record]).fit(pairs())
    assert record.begin == {"description": type(model).__name__, "max_epochs": 3, "n_steps": 0, "resumed": False}
    assert [step for step, _ in record.steps] == list(range(5, model.n_steps_ + 1, 5))
    assert [epoch for epoch, _ in record.epochs] == [1, 2, 3]
    for (_, metrics), loss, val in zip(record.epochs, model.loss_curve_, model.validation_curve_):
        assert set(metrics) == {"loss", "val_loss", "lr", "n_steps"} | parts | model_metrics
        assert metrics["loss"] == pytest.approx(loss) and metrics["val_loss"] == pytest.approx(val)
    epoch_steps = [metrics["n_steps"] for _, metrics in record.epochs]
    assert epoch_steps[-1] == model.n_steps_ and np.all(np.diff(epoch_steps) == epoch_steps[0])  # equal epochs
    if case == "vq":  # the loss is its parts, weighted
        metrics = record.epochs[-1][1]
        assert metrics["loss"] == pytest.approx(metrics["mse"] + 0.1 * metrics["commitment"], rel=1e-6)
        assert 1 <= metrics["perplexity"] <= 8 and 1 <= metrics["active_codes"] <= 8
    assert record.end == {"n_epochs": 3, "n_steps": model.n_steps_, "best_epoch": model.best_epoch_,
                          "stopped_early": False, "diverged": None}
    assert_same_fit(make(case).fit(pairs()), model)  # logging changes nothing


def test_the_warm_up_shows_in_the_step_learning_rate():
    record = Record()
    record.log_every_n_steps = 1
    make("vq", callbacks=[record]).fit(pairs())
    rates = [metrics["lr"] for _, metrics in record.steps[:6]]
    # step s is logged after the update that used lr * s / warmup_steps (5 warm-up steps)
    np.testing.assert_allclose(rates, [1e-3 * s / 5 for s in (1, 2, 3, 4, 5)] + [1e-3], rtol=1e-12)


def test_tensorboard_logger_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = make("vq", callbacks=[TensorBoardLogger(tmp_path, log_every_n_steps=10, prefix="run")]).fit(pairs())
    events = EventAccumulator(str(tmp_path)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"run/epoch/loss", "run/epoch/val_loss", "run/epoch/perplexity", "run/step/loss", "run/step/lr"} <= tags
    losses = [event.value for event in events.Scalars("run/epoch/loss")]
    np.testing.assert_allclose(losses, model.loss_curve_, rtol=1e-6)
    assert [event.step for event in events.Scalars("run/step/loss")] == list(range(10, model.n_steps_ + 1, 10))
    assert model.callbacks[0]._writer is None  # closed


def test_estimators_with_loggers_clone_and_pickle(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    model = SingleLayerVQ(k=4, callbacks=[logger], checkpoint_dir=str(tmp_path), checkpoint_every=10)
    twin = clone(model)
    assert twin.callbacks[0] is not logger and twin.callbacks[0].log_dir == tmp_path
    assert twin.get_params()["checkpoint_every"] == 10
    back = pickle.loads(pickle.dumps(model))
    assert back.callbacks[0].log_dir == tmp_path


def fake_wandb(monkeypatch) -> list:
    """A stand-in ``wandb`` module; returns the list its calls are recorded in."""
    calls = []

    class Run:
        def define_metric(self, name, **kw):
            calls.append(("define_metric", name, kw))

        def log(self, values, step=None):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    return calls


def test_wandb_logger_logs_a_run_through_the_wandb_api(monkeypatch):
    calls = fake_wandb(monkeypatch)
    logger = WandbLogger(project="clvq", mode="offline", log_every_n_steps=4, config={"k": 12}, tags=["test"])
    model = make("sae", callbacks=[logger]).fit(pairs())
    assert calls[0] == ("init", {"config": {"k": 12, "description": "SparseAutoencoder", "resumed": False},
                                 "project": "clvq", "mode": "offline", "tags": ["test"]})
    logs = [(values, step) for kind, *rest in calls if kind == "log" for values, step in [rest]]
    assert [step for values, step in logs if "epoch" not in values] == list(range(4, model.n_steps_ + 1, 4))
    epochs = [(values, step) for values, step in logs if "epoch" in values]
    assert [values["epoch"] for values, _ in epochs] == [1, 2, 3]
    assert epochs[-1][0]["epoch/loss"] == pytest.approx(model.loss_curve_[-1]) and epochs[-1][1] == model.n_steps_
    assert not any(name.endswith("n_steps") for values, _ in logs for name in values)
    assert calls[-1] == ("finish",) and logger._run is None


@pytest.mark.parametrize("every", [1, 3, 5, 50, None])
def test_wandb_steps_never_go_back_with_short_epochs(every, monkeypatch):
    """Epochs of 2 steps and other logging intervals: every log names a step, and steps never decrease."""
    calls = fake_wandb(monkeypatch)
    model = make("sae", batch_size=400, max_epochs=6, callbacks=[WandbLogger(log_every_n_steps=every)]).fit(pairs())
    logs = [(values, step) for kind, *rest in calls if kind == "log" for values, step in [rest]]
    steps = [step for _, step in logs]
    assert None not in steps and steps == sorted(steps), steps
    epoch_steps = [step for values, step in logs if "epoch" in values]
    assert len(epoch_steps) == 6 and len(set(epoch_steps)) == 6 and epoch_steps[-1] == model.n_steps_
    assert model.n_steps_ == 12  # 2 steps an epoch: fewer than most logging intervals


def test_a_missing_logger_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="pip install wandb"):
        make("sae", callbacks=[WandbLogger()]).fit(pairs())


def test_save_keeps_the_model_not_the_run_settings(tmp_path):
    """Loggers, checkpoint_dir, device, distributed, verbose: saved at their defaults, out of the card."""
    logger = TensorBoardLogger(tmp_path / "runs")
    run = dict(callbacks=[logger], checkpoint_dir=tmp_path / "checkpoints", checkpoint_every=7, device="cpu",
               distributed="auto", verbose=0)
    model = make("sae", **run).fit(pairs())
    folder = model.save(tmp_path / "model")
    loaded = SparseAutoencoder.load(folder)
    defaults = SparseAutoencoder().get_params()
    for name in ("callbacks", "checkpoint_dir", "checkpoint_every", "device", "distributed", "verbose"):
        assert getattr(loaded, name) == defaults[name], name
    assert (loaded.k, loaded.top_k, loaded.max_epochs) == (12, 3, 3)  # the model's own parameters travel
    assert model.get_params()["checkpoint_dir"] == tmp_path / "checkpoints" and model.callbacks == [logger]
    for file in folder.iterdir():  # no local path of the training run in config.json, the card or the tensors
        assert str(tmp_path).encode() not in file.read_bytes(), file.name
    card = read_model_card(folder)["clvqlearn"]["params"]
    assert not {"callbacks", "checkpoint_dir", "checkpoint_every", "device", "distributed", "verbose"} & set(card)
    assert card["k"] == 12
    np.testing.assert_array_equal(loaded.transform(pairs()), model.transform(pairs()))


def test_a_fit_killed_after_it_stopped_early_does_not_train_on(tmp_path, monkeypatch):
    settings = dict(max_epochs=40, early_stopping_patience=1, learning_rate=3e-2)
    reference = make("sae", **settings).fit(pairs())
    assert reference.n_iter_ < 40  # it stopped early

    def dies_at_the_final_write(self, payload):
        if payload["finished"]:
            raise KeyboardInterrupt
        real(self, payload)

    real = Checkpointer.save
    monkeypatch.setattr(Checkpointer, "save", dies_at_the_final_write)
    with pytest.raises(KeyboardInterrupt):
        make("sae", checkpoint_dir=tmp_path, **settings).fit(pairs())
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="resumes"):
        resumed = make("sae", checkpoint_dir=tmp_path, **settings).fit(pairs())
    assert resumed.n_iter_ == reference.n_iter_
    assert_same_fit(reference, resumed)
