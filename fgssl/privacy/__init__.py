"""Sample-level differential privacy: honest accounting and the per-node privacy ledger (docs/privacy.md).

Importing this package does not import torch or opacus; they are loaded when an ε is computed.
"""

from .accounting import (
    ACCOUNTANTS,
    AccountingError,
    PRV_EPS_ERROR,
    RDP_ORDERS,
    Mechanism,
    PrivacyParameterError,
    compose_same_batch,
    default_delta,
    dp_sgd_run,
    epsilon,
    noise_for_target_epsilon,
    same_batch_steps_sigma,
    statistic_and_gradient_sigma,
)
from .ledger import (
    BudgetExceededError,
    LedgerCorruptError,
    LedgerEntry,
    LedgerError,
    LedgerLockedError,
    PrivacyLedger,
    refusal_message,
)

__all__ = [
    "ACCOUNTANTS", "AccountingError", "PRV_EPS_ERROR", "RDP_ORDERS", "Mechanism", "PrivacyParameterError",
    "compose_same_batch", "default_delta", "dp_sgd_run", "epsilon", "noise_for_target_epsilon",
    "same_batch_steps_sigma", "statistic_and_gradient_sigma", "BudgetExceededError", "LedgerCorruptError",
    "LedgerEntry", "LedgerError", "LedgerLockedError", "PrivacyLedger", "refusal_message",
]
