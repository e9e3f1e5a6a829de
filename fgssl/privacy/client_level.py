"""Client-level accounting (privacy.mode: client): what the server's noised average of clipped site updates costs.

Every round a site's clipped update enters the noised sum is one Gaussian mechanism with noise multiplier σ and
no subsampling (q = 1: every site takes part); a site's ε composes the rounds it took part in. The neighbouring
relation is adding or removing one site's whole contribution, given the set of sites the server saw reply.
"""

from __future__ import annotations

from ..config import Config, ConfigError
from .accounting import Mechanism, default_delta, epsilon, noise_for_target_epsilon


class ClientLevelAccount:
    def __init__(self, cfg: Config) -> None:
        p, rounds = cfg.privacy, cfg.federation.total_rounds
        self.accountant = p.accountant
        self.clip_norm = p.client_clip_norm
        self.delta = p.delta if p.delta is not None else default_delta(cfg.federation.sites)
        if p.noise_multiplier is not None:
            self.noise_multiplier = float(p.noise_multiplier)
        else:
            self.noise_multiplier = noise_for_target_epsilon(p.target_epsilon, self.delta, 1.0, rounds, p.accountant)
        planned = self.epsilon_after(rounds)
        if p.budget is not None and planned > p.budget:
            raise ConfigError("privacy.noise_multiplier", f"σ={self.noise_multiplier:g} over {rounds} rounds spends "
                                                          f"ε={planned:.2f} > the budget {p.budget:g}")
        self.rounds: dict[str, int] = {}

    def epsilon_after(self, rounds: int) -> float:
        if rounds == 0:
            return 0.0
        return epsilon([Mechanism(sample_rate=1.0, noise_multiplier=self.noise_multiplier, steps=rounds)],
                       self.delta, self.accountant)

    def release(self, site: str) -> dict[str, float]:
        """Count one more released round for `site`; returns its ε and δ so far."""
        self.rounds[site] = self.rounds.get(site, 0) + 1
        return {"epsilon": self.epsilon_after(self.rounds[site]), "delta": self.delta}
