"""Aggregation for this project: pure math over named arrays, plus thin Flower adapters."""

from strategies.aggregate import (
    AGGREGATION_METHODS,
    SiteUpdate,
    aggregate,
    norm_bounded_mean,
    trimmed_mean,
    weighted_mean,
)
from strategies.groups import keys_matching, select, shared_keys
from strategies.server_opt import (
    SERVER_OPTIMIZERS,
    FedAdam,
    FedAvgM,
    FedAvgServer,
    ServerOptimizer,
    make_server_optimizer,
)
from strategies.validation import UpdateBounds, validate_update

__all__ = [
    "AGGREGATION_METHODS",
    "SERVER_OPTIMIZERS",
    "FedAdam",
    "FedAvgM",
    "FedAvgServer",
    "ServerOptimizer",
    "SiteUpdate",
    "UpdateBounds",
    "aggregate",
    "keys_matching",
    "make_server_optimizer",
    "norm_bounded_mean",
    "select",
    "shared_keys",
    "trimmed_mean",
    "validate_update",
    "weighted_mean",
]
