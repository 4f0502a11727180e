"""Sweeps across machines: GridSearchCV on a dask.distributed cluster.

The store is passed as a lazy view that pickles as its path, so the
workers read the activations themselves; no activations are pickled.
The cluster is a LocalCluster of two worker PROCESSES started here.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from lazy_store import NpyStore, write_store
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from clvqlearn import CrossLayerVQ, LayerPairs
from clvqlearn.concepts.kmeans import KMeansConcepts

distributed = pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")


def _store(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 12, size=90)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    low = (rng.normal(size=(6, 6)) * 3)[rng.integers(0, 6, size=offsets[-1])] + rng.normal(size=(offsets[-1], 6))
    high = np.tanh(low @ rng.normal(size=(6, 6)) / 3)
    pairs = LayerPairs(low=low.astype(np.float32), high=high.astype(np.float32), offsets=offsets, layers=(1, 2),
                       model_name="synthetic")
    return NpyStore(write_store(tmp_path / "store", pairs))


def test_grid_search_on_a_dask_cluster_equals_the_sequential_one(tmp_path):
    from distributed import Client, LocalCluster, get_task_stream

    view = _store(tmp_path)
    assert len(pickle.dumps(view)) < 1000  # the path, not the activations
    # an integer cv gives document folds: len(view) and view.shape[0] count documents, view[docs] selects them
    folds = 3
    pipe = Pipeline([("concepts", KMeansConcepts(random_state=0, n_init=1))])
    vq = Pipeline([("concepts", CrossLayerVQ(top_k=2, decoder="mlp", decoder_hidden=16, max_epochs=2, batch_size=8,
                                             device="cpu", random_state=0))])
    searches = [(pipe, {"concepts__k": [2, 4, 8]}), (vq, {"concepts__k": [3, 6]})]
    sequential = [GridSearchCV(p, grid, cv=folds).fit(view) for p, grid in searches]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with get_task_stream(client) as stream, joblib.parallel_config(backend="dask"):
            remote = [GridSearchCV(p, grid, cv=folds, n_jobs=2).fit(view) for p, grid in searches]
        workers = {task["worker"] for task in stream.data}
    assert len(workers) == 2  # both worker processes ran fits
    for seq, dist in zip(sequential, remote):
        assert np.isfinite(seq.cv_results_["mean_test_score"]).all()  # every fit succeeded
        # equal up to float rounding: dask workers run BLAS/OpenMP with one thread (threads_per_worker=1),
        # the test process with as many as it has, which changes summation order (seen: 3e-9 relative)
        np.testing.assert_allclose(seq.cv_results_["mean_test_score"], dist.cv_results_["mean_test_score"],
                                   rtol=1e-6)
        assert seq.best_params_ == dist.best_params_
        np.testing.assert_allclose(seq.best_estimator_[-1].components_, dist.best_estimator_[-1].components_,
                                   rtol=1e-5, atol=1e-6)
