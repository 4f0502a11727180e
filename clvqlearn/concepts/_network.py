"""The base of the torch estimators: CrossLayerVQ, SingleLayerVQ and SparseAutoencoder.

It holds what their ``_fit_data`` and inference share, once: whether a call
starts a new network or continues the fitted one (:meth:`_start_or_resume`),
and the private cache of the torch network rebuilt from the fitted numpy
state (:meth:`_network`).  The cache is keyed on the device and on the
settings the network is built with besides its shapes (``temperature``,
``top_k``, the SAE's ``activation``, ...), so a ``set_params`` that only
steers the model takes effect at once.

A subclass implements four hooks:

``_network_settings()``
    What the network is built with besides its shapes (compared with ``==``).
``_empty_network()``
    A new network with the fitted shapes; its weights are overwritten.
``_network_arrays()``
    The fitted state as ``{parameter name: array}`` for ``load_numpy_state``.
``_start_network(data, rng, device)``
    A new network started from the data, for ``fit`` and a first ``partial_fit``.
"""

from __future__ import annotations

from .._torch_utils import load_numpy_state, seeded
from ._base import ConceptEstimator


class _NetworkEstimator(ConceptEstimator):
    """Shared machinery of the estimators fitted as a torch network (not public)."""

    # ------------------------------------------------------------ hooks
    def _network_settings(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _empty_network(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _network_arrays(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _start_network(self, data, rng, device):  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------- training
    def _start_or_resume(self, data, partial: bool, device):
        """``(rng, network)`` that a ``_fit_data`` call trains.

        A ``partial_fit`` that continues a fitted state (``_resumes``) goes
        on with the fitted network and the random state of the earlier
        calls; otherwise a new network is started from ``data`` with a
        fresh random state, and the counters and curves start at zero.
        """
        if self._resumes(partial):
            rng = getattr(self, "_rng", None) or self._check_random_state()
            network = self._network(device)
        else:
            rng = self._check_random_state()
            network = self._start_network(data, rng, device)
            self.n_iter_, self.n_steps_, self.loss_curve_, self.validation_curve_ = 0, 0, [], []
            self._train_state = None
        self._rng = rng
        return rng, network

    def _keep_network(self, network, device) -> None:
        """Cache the network just trained for inference on ``device``."""
        self._cache_network = (device, self._network_settings(), network)

    # --------------------------------------------------------- inference
    def _network(self, device=None):
        """The torch network for the fitted state (a private, rebuilt cache)."""
        device = device or self._resolve_device()
        cached = getattr(self, "_cache_network", None)
        if cached is not None and cached[:2] == (device, self._network_settings()):
            return cached[2]  # rebuilt when set_params changed a setting it is built with (temperature, ...)
        with seeded(0, device):  # construction draws from the global RNG; the weights are overwritten
            network = self._empty_network()
        network.to(device)
        load_numpy_state(network, self._network_arrays())
        network.eval()
        self._keep_network(network, device)
        return network
