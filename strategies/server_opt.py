"""Server optimisers on the aggregate (Reddi et al., "Adaptive Federated Optimization").

Each round the aggregate gives a pseudo-gradient ``delta = aggregate - global``; the
optimiser turns it into the new global values. Only keys present in the aggregate are
stepped: the others keep their global values and their moments. Float math is in
float64; returned arrays keep the global's dtype. Integer arrays (counters) just take the
aggregate's value. Untouched arrays are returned as the same objects (no copy).

State is flat named values for safetensors: ``"m/<key>"``, ``"v/<key>"`` (float64
arrays) and ``"t"`` (steps taken, int).
"""

from typing import Any

import numpy as np

from strategies.validation import is_float

NamedArrays = dict[str, np.ndarray]
State = dict[str, np.ndarray | float | int]


def _check(global_: NamedArrays, aggregate: NamedArrays) -> None:
    unknown = [k for k in aggregate if k not in global_]
    if unknown:
        raise ValueError(f"aggregate has keys not in the global model: {', '.join(unknown)}")
    for key, agg in aggregate.items():
        if agg.shape != global_[key].shape:
            raise ValueError(
                f"key {key!r}: aggregate shape {agg.shape} != global {global_[key].shape}"
            )


class ServerOptimizer:
    """Base: subclasses implement ``_update`` for one float key; state is kept in moment dicts."""

    moment_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.t = 0
        self.moments: dict[str, NamedArrays] = {name: {} for name in self.moment_names}

    def step(self, global_: NamedArrays, aggregate: NamedArrays,
             statistics: frozenset[str] | set[str] = frozenset()) -> NamedArrays:
        """New global values: ``global_`` with the keys of ``aggregate`` stepped.

        ``statistics`` (running means and variances, e.g. BatchNorm's) are not parameters and take the aggregate as
        it is: momentum could drive a variance negative, and Adam's small steps would pin them near their initial
        values, so the model would normalise with statistics of no site.
        """
        _check(global_, aggregate)
        self.t += 1
        new = dict(global_)
        for key, agg in aggregate.items():
            old = global_[key]
            if not is_float(old) or key in statistics:
                new[key] = agg.astype(old.dtype)
                continue
            x = old.astype(np.float64)
            delta = agg.astype(np.float64) - x
            new[key] = (x + self._update(key, delta)).astype(old.dtype)
        return new

    def _update(self, key: str, delta: np.ndarray) -> np.ndarray:
        """The change to apply to ``key`` given its pseudo-gradient; updates moments."""
        raise NotImplementedError

    def _moment(self, name: str, key: str, like: np.ndarray) -> np.ndarray:
        # Lazily created: a key first aggregated in a later phase starts from zero.
        return self.moments[name].setdefault(key, np.zeros_like(like, dtype=np.float64))

    def state_dict(self) -> State:
        """Flat named state: moments as ``"<moment>/<key>"`` arrays and ``"t"``."""
        state: State = {"t": self.t}
        for name, table in self.moments.items():
            state.update({f"{name}/{key}": value.copy() for key, value in table.items()})
        return state

    def load_state_dict(self, state: State) -> None:
        """Restore what ``state_dict`` returned; unknown entries are an error."""
        moments: dict[str, NamedArrays] = {name: {} for name in self.moment_names}
        for name, value in state.items():
            if name == "t":
                continue
            prefix, sep, key = name.partition("/")
            if not sep or prefix not in moments:
                raise ValueError(f"{type(self).__name__}: unexpected state entry {name!r}")
            moments[prefix][key] = np.array(value, dtype=np.float64)
        # safetensors stores a scalar as shape (1,) or (): accept either
        self.t = int(np.asarray(state.get("t", 0)).reshape(-1)[0])
        self.moments = moments


class FedAvgServer(ServerOptimizer):
    """FedAvg with a server learning rate: x += server_lr * delta, no state. At server_lr 1 the new global is the
    aggregate; above 1 the averaged step is lengthened (Reddi et al.'s "FedAvg with server learning rate"). K sites'
    averaged updates move the model about as far as one site's, but lengthening them is no cure: with the default
    AdamW sites, server_lr 2 did far worse than 1 (docs/RESULTS.md, E3 evening)."""

    def __init__(self, server_lr: float = 1.0) -> None:
        super().__init__()
        self.server_lr = server_lr

    def step(self, global_: NamedArrays, aggregate: NamedArrays,
             statistics: frozenset[str] | set[str] = frozenset()) -> NamedArrays:
        if self.server_lr != 1.0:
            return super().step(global_, aggregate, statistics)
        # Copied, not x + (aggregate - x): that round trip is not always exact.
        _check(global_, aggregate)
        self.t += 1
        new = dict(global_)
        new.update({k: a.astype(global_[k].dtype) for k, a in aggregate.items()})
        return new

    def _update(self, key: str, delta: np.ndarray) -> np.ndarray:
        return self.server_lr * delta


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al.): m = momentum * m + delta; x += server_lr * m."""

    moment_names = ("m",)

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__()
        self.server_lr = server_lr
        self.momentum = momentum

    def _update(self, key: str, delta: np.ndarray) -> np.ndarray:
        m = self._moment("m", key, delta)
        m *= self.momentum
        m += delta
        return self.server_lr * m


class FedAdam(ServerOptimizer):
    """FedAdam as in the FedOpt paper (no bias correction, moments start at 0).

    m = b1 m + (1 - b1) d;  v = b2 v + (1 - b2) d^2;  x += server_lr * m / (sqrt(v) + tau).
    """

    moment_names = ("m", "v")

    def __init__(
        self, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__()
        self.server_lr = server_lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau

    def _update(self, key: str, delta: np.ndarray) -> np.ndarray:
        m = self._moment("m", key, delta)
        v = self._moment("v", key, delta)
        m *= self.beta1
        m += (1 - self.beta1) * delta
        v *= self.beta2
        v += (1 - self.beta2) * delta**2
        return self.server_lr * m / (np.sqrt(v) + self.tau)


SERVER_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    "fedavg": FedAvgServer,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
}


def make_server_optimizer(name: str, **params: Any) -> ServerOptimizer:
    """Build a server optimiser by name: "fedavg", "fedavgm" or "fedadam"."""
    if name not in SERVER_OPTIMIZERS:
        raise ValueError(
            f"unknown server optimizer {name!r}; expected one of {', '.join(SERVER_OPTIMIZERS)}"
        )
    return SERVER_OPTIMIZERS[name](**params)
