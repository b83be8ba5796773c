"""A grid of runs: every method with every combination of its hyperparameters, at every label-noise
rate, for every seed; and the id that names each run's record."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..train import METHODS, TrainConfig
from .spec import DataSpec
from .stats import fmt

__all__ = ["Grid", "run_id"]


@dataclass
class Grid:
    """A grid: every method with every combination of its hyperparameter values, at every noise
    rate, for every seed. ``methods`` maps a method name to ``{hyperparameter: [values]}``."""

    name: str = "grid"
    data: DataSpec = field(default_factory=DataSpec)
    train: dict = field(default_factory=dict)           # TrainConfig fields shared by all runs
    methods: dict = field(default_factory=lambda: {"SGD": {}, "SAM": {"rho": [0.05]}})
    noise_rates: list = field(default_factory=lambda: [0.0])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    overrides: dict = field(default_factory=dict)       # per-method TrainConfig fields, e.g. weight decay
    save_models: list = field(default_factory=list)     # seeds whose final weights go to DIR/models/<run id>.pt
    seeds_per_noise: dict = field(default_factory=dict)  # e.g. {"0.4": [0, 1, 2, 3, 4]}: more seeds where it matters

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        d = dict(d)
        d["data"] = DataSpec(**d.get("data", {}))
        return cls(**d)

    def validate(self):
        for method, hp in self.methods.items():
            if method not in METHODS:
                raise ValueError(f"Unknown method {method!r}. Choose from: {', '.join(METHODS)}.")
            if not isinstance(hp, dict):
                raise ValueError(f"methods[{method!r}] must map hyperparameter names to lists of values.")
        for rate in self.noise_rates:
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"Invalid noise rate: {rate!r}. Noise rates must lie in [0, 1).")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed.")
        unknown = set(self.seeds_per_noise) - {fmt(rate) for rate in self.noise_rates}
        if unknown:
            raise ValueError(f"seeds_per_noise has keys {sorted(unknown)} that are not noise rates; use the rate as "
                             f"text, one of {[fmt(rate) for rate in self.noise_rates]}.")
        self.data.validate()
        return self

    def runs(self):
        """Yield ``(noise_rate, TrainConfig)`` for every run, in a fixed order."""
        for rate in self.noise_rates:
            for method, hp in self.methods.items():
                names = sorted(hp)
                for values in itertools.product(*(hp[k] if isinstance(hp[k], list) else [hp[k]] for k in names)):
                    for seed in self.seeds_per_noise.get(fmt(rate), self.seeds):
                        fields = {**self.train, **self.overrides.get(method, {})}
                        yield rate, TrainConfig(method=method, hparams=dict(zip(names, values)), seed=seed,
                                                **fields).validate()


def run_id(rate: float, config: TrainConfig) -> str:
    """``noise<rate>_<method>[-<hp><value>...]_seed<seed>``, e.g. ``noise0.4_SAM-rho0.05_seed0``."""
    hp = "-".join(f"{k}{fmt(v)}" for k, v in sorted(config.hparams.items()))
    return f"noise{fmt(rate)}_{config.method}{'-' + hp if hp else ''}_seed{config.seed}"
