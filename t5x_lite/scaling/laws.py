"""Scaling laws and their compute-optimal allocations.

- `ChinchillaLaw`: L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022,
  approach 3). Under C = 6 N D its optimum is closed-form:
  N_opt = G (C/6)^a, D_opt = (C/6)^b / G, G = (alpha A / (beta B))^(1/(alpha+beta)),
  a = beta / (alpha + beta), b = alpha / (alpha + beta).
- `ExpertsLaw`: the Chinchilla law of mixture-of-experts models with N active
  parameters and E experts, L(N, D, E) = E_0 + A / (N E^delta)^alpha + B / D^beta:
  E experts act as a dense model of N E^delta parameters (Clark et al. 2022's
  effective parameter count, in the power-law form their saturating transform of E
  takes below its saturation; gamma = alpha delta is what the fit estimates). At fixed
  E it is a ChinchillaLaw with A E^-gamma (`at`), so the compute-optimal active size
  (C = 6 N D, N active) is N_opt(C, E) = N_opt(C, 1) E^(-gamma / (alpha + beta)).
  With `omega` the data term is B E^omega / D^beta as well (experts that each see a
  share of the tokens may need more of them: the E-dependent data term of Ludziejewski
  et al. 2025's joint MoE law, as a power of E), and the shift is
  E^(-(gamma + omega) / (alpha + beta)); omega = 0 is the form above.
- `KaplanLaw`: L(N, D) = ((N_c / N)^(alpha_N / alpha_D) + D_c / D)^alpha_D
  (Kaplan et al. 2020, eq. 1.5); its optimum under 6ND = C is found numerically.
- `PowerLawAllocation`: N_opt = k_N C^a, D_opt = k_D C^b (Chinchilla approaches
  1 and 2 publish these exponents; the coefficients are least-squares fits,
  with the exponents held at their published values, to the paper's own
  allocation tables, which are kept below).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Union

import numpy as np
from scipy import optimize

from t5x_lite.common.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Allocation:
  """The compute-optimal model for a budget of `flops` training FLOPs."""
  flops: float
  params: float
  tokens: float
  loss: float | None = None

  @property
  def tokens_per_param(self) -> float:
    return self.tokens / self.params

  def as_dict(self) -> dict:
    return {**dataclasses.asdict(self), "tokens_per_param": self.tokens_per_param}


@dataclasses.dataclass(frozen=True)
class ChinchillaLaw:
  E: float
  A: float
  B: float
  alpha: float
  beta: float

  def loss(self, params, tokens):
    params, tokens = np.asarray(params, float), np.asarray(tokens, float)
    return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

  @property
  def a(self) -> float:
    return self.beta / (self.alpha + self.beta)

  @property
  def b(self) -> float:
    return self.alpha / (self.alpha + self.beta)

  @property
  def G(self) -> float:
    return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

  def optimal(self, flops: float) -> Allocation:
    """Closed-form minimum of L(N, D) subject to 6 N D = flops."""
    params = self.G * (flops / 6.0) ** self.a
    tokens = (flops / 6.0) ** self.b / self.G
    return Allocation(flops, params, tokens, float(self.loss(params, tokens)))


@dataclasses.dataclass(frozen=True)
class ExpertsLaw:
  """L(N, D, E) = E0 + A / (N E^delta)^alpha + B E^omega / D^beta with gamma = alpha delta
  (see the module docstring); E0 is the irreducible loss (E names the experts here)."""
  E0: float
  A: float
  B: float
  alpha: float
  beta: float
  gamma: float
  omega: float = 0.0

  def loss(self, params, tokens, experts):
    params, tokens, experts = (np.asarray(x, float) for x in (params, tokens, experts))
    return (self.E0 + self.A * experts ** -self.gamma / params ** self.alpha +
            self.B * experts ** self.omega / tokens ** self.beta)

  def at(self, experts: float) -> ChinchillaLaw:
    """The law of models with `experts` experts: a ChinchillaLaw in active parameters."""
    return ChinchillaLaw(E=self.E0, A=self.A * experts ** -self.gamma,
                         B=self.B * experts ** self.omega, alpha=self.alpha, beta=self.beta)

  @property
  def delta(self) -> float:
    """Effective parameters per active parameter grow as E^delta."""
    return self.gamma / self.alpha

  def optimal_shift(self, experts: float) -> float:
    """N_opt(C, E) / N_opt(C, 1) under C = 6ND: the same at every compute."""
    return experts ** (-(self.gamma + self.omega) / (self.alpha + self.beta))


@dataclasses.dataclass(frozen=True)
class KaplanLaw:
  N_c: float = 8.8e13
  D_c: float = 5.4e13
  alpha_N: float = 0.076
  alpha_D: float = 0.095

  def loss(self, params, tokens):
    params, tokens = np.asarray(params, float), np.asarray(tokens, float)
    return ((self.N_c / params) ** (self.alpha_N / self.alpha_D) +
            self.D_c / tokens) ** self.alpha_D

  def optimal(self, flops: float) -> Allocation:
    return optimal_numerically(self.loss, flops)


@dataclasses.dataclass(frozen=True)
class PowerLawAllocation:
  k_N: float
  a: float
  k_D: float
  b: float

  def optimal(self, flops: float) -> Allocation:
    # numpy powers: an absurd bootstrap exponent gives inf, not OverflowError.
    return Allocation(flops, float(self.k_N * np.power(flops, self.a)),
                      float(self.k_D * np.power(flops, self.b)))

  @classmethod
  def fit_coefficients(cls, a: float, b: float, rows: tuple) -> "PowerLawAllocation":
    """Least-squares log coefficients for fixed exponents through (N, C, D) rows."""
    params, flops, tokens = (np.array(column, float) for column in zip(*rows))
    k_N = math.exp(np.mean(np.log(params) - a * np.log(flops)))
    k_D = math.exp(np.mean(np.log(tokens) - b * np.log(flops)))
    return cls(k_N, a, k_D, b)


def optimal_numerically(loss: Callable, flops: float,
                        flops_per_token: Callable[[float], float] | None = None) -> Allocation:
  """Minimises loss(N, D) over N with D = flops / flops_per_token(N)
  (default 6N): the optimum under an exact FLOP count of a model family."""
  per_token = flops_per_token or (lambda n: 6.0 * n)

  def objective(log_params):
    params = math.exp(log_params)
    return float(loss(params, flops / per_token(params)))

  # Bracket the optimum between 1 parameter and the model that sees one token.
  upper = math.log(optimize.brentq(lambda n: per_token(n) - flops, 1.0, flops))
  result = optimize.minimize_scalar(objective, bounds=(0.0, upper), method="bounded",
                                    options={"xatol": 1e-10})
  params = math.exp(result.x)
  tokens = flops / per_token(params)
  return Allocation(flops, params, tokens, float(loss(params, tokens)))


# Hoffmann et al. 2022: (N, C, D) rows of Table 3 (approach 1) and Table A3
# (approach 2), and the exponents of Table 2.
CHINCHILLA_TABLE3 = (
    (4.0e8, 1.92e19, 8.0e9), (1.0e9, 1.21e20, 2.02e10), (1.0e10, 1.23e22, 2.051e11),
    (6.7e10, 5.76e23, 1.5e12), (1.75e11, 3.85e24, 3.7e12), (2.8e11, 9.90e24, 5.9e12),
    (5.2e11, 3.43e25, 1.10e13), (1.0e12, 1.27e26, 2.12e13), (1.0e13, 1.30e28, 2.162e14))
CHINCHILLA_TABLE_A3_APPROACH2 = (
    (4.0e8, 1.84e19, 7.7e9), (1.0e9, 1.20e20, 2.00e10), (1.0e10, 1.32e22, 2.195e11),
    (6.7e10, 6.88e23, 1.7e12), (1.75e11, 4.54e24, 4.3e12), (2.8e11, 1.18e25, 7.1e12),
    (5.2e11, 4.19e25, 1.34e13), (1.0e12, 1.59e26, 2.65e13), (1.0e13, 1.75e28, 2.92e14))

Law = Union[ChinchillaLaw, KaplanLaw, PowerLawAllocation]

PRESETS: dict[str, Law] = {
    "chinchilla-approach1": PowerLawAllocation.fit_coefficients(0.50, 0.50, CHINCHILLA_TABLE3),
    "chinchilla-approach2": PowerLawAllocation.fit_coefficients(
        0.49, 0.51, CHINCHILLA_TABLE_A3_APPROACH2),
    "chinchilla-approach3": ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
    "epoch-2024": ChinchillaLaw(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658),
    "kaplan-2020": KaplanLaw(),
}


def preset(name: str) -> Law:
  if name not in PRESETS:
    raise ConfigError(f"Unknown scaling-law preset {name!r}; choose one of {sorted(PRESETS)}.")
  return PRESETS[name]
