"""From proxy runs to a proposed mix: the mixtures to try, a fitted law per domain, its cross-validated rank
correlation, and the mixture that minimises the objective under each domain's cap. Plain numpy, no Ray.

The law (Data Mixing Laws, Ye et al. 2024): a domain's validation loss against the mixture weights r,

    L_i(r) = c_i + exp(sum_j t_ij r_j)

(the law's k_i exp(...) with log k_i folded into the t_ij, since the weights sum to 1). For a given floor c_i the
law is linear in log(L_i - c_i), so the fit is a least-squares solve for each c_i on a grid below the smallest
measured loss, keeping the c_i of the smallest squared error in loss units. Why this and not RegMix's LightGBM:
with the tens of proxies a CPU or one GPU can train, a law with D + 1 parameters per domain extrapolates
smoothly and monotonically in each weight, where a tree ensemble is piecewise constant (no gradient to follow
between the proxies) and needs hundreds of runs; and it needs nothing beyond numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOOR_GRID = 64  # floors c tried per domain
RIDGE = 1e-3  # keeps the solve defined (and the law tame) when few distinct proxies pin it down
CANDIDATES = 50_000  # mixtures scored when proposing
TOP_AVERAGED = 64  # the proposal: the mean of the best-scoring candidates (RegMix), steadier than the single best
BOOTSTRAPS = 200


def dirichlet_mixtures(base: np.ndarray, count: int, concentration: float, seed: int) -> np.ndarray:
    """`count` mixtures: the base first, then draws from a Dirichlet centred on it (alpha = concentration x
    domains x base share, so concentration 1 averages alpha 1 per domain; lower spreads wider)."""
    alpha = np.maximum(concentration * len(base) * base / base.sum(), 1e-3)
    draws = np.random.default_rng(seed).dirichlet(alpha, size=count - 1)
    return np.vstack([base / base.sum(), draws])


@dataclass(frozen=True, slots=True)
class Law:
    floor: float  # c
    t: np.ndarray  # (domains,)

    def predict(self, weights: np.ndarray) -> np.ndarray:
        return self.floor + np.exp(np.atleast_2d(weights) @ self.t)


def fit_law(weights: np.ndarray, losses: np.ndarray) -> Law:
    """The law of one domain's `losses` (n,) at `weights` (n, domains), least squares in loss units over the
    floor grid."""
    best = None
    gram = weights.T @ weights + RIDGE * np.eye(weights.shape[1])
    for floor in np.linspace(0.0, 0.999 * float(losses.min()), FLOOR_GRID):
        t = np.linalg.solve(gram, weights.T @ np.log(losses - floor))
        error = float(np.sum((floor + np.exp(weights @ t) - losses) ** 2))
        if best is None or error < best[0]:
            best = (error, Law(float(floor), t))
    return best[1]


def fit_all(weights: np.ndarray, losses: np.ndarray) -> list[Law]:
    """One law per domain: `losses` is (n, domains)."""
    return [fit_law(weights, losses[:, i]) for i in range(losses.shape[1])]


def predict_all(laws: list[Law], weights: np.ndarray) -> np.ndarray:
    """(candidates, domains) predicted losses."""
    return np.column_stack([law.predict(weights) for law in laws])


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def cross_validated(weights: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Leave-one-out: each proxy's losses predicted by the laws fitted to all the others, (n, domains)."""
    out = np.empty_like(losses)
    for k in range(len(weights)):
        rest = np.arange(len(weights)) != k
        out[k] = predict_all(fit_all(weights[rest], losses[rest]), weights[k : k + 1])[0]
    return out


@dataclass(frozen=True, slots=True)
class Proposal:
    weights: np.ndarray  # (domains,) summing to 1
    predicted: np.ndarray  # (domains,) losses at the proposal
    base_predicted: np.ndarray  # (domains,) at the base mix
    objective: float
    base_objective: float
    gain_median: float  # base objective - proposed objective, over bootstrap refits
    gain_spread: (
        float  # 1.4826 x their median absolute deviation: a standard deviation that one wild refit cannot inflate
    )
    gain_interval: tuple[float, float]  # 5% and 95% quantiles
    predicted_spread: np.ndarray  # (domains,) the same robust spread of the proposal's predicted losses
    base_predicted_spread: np.ndarray


def propose(
    weights: np.ndarray,
    losses: np.ndarray,
    coefficients: np.ndarray,
    caps: np.ndarray,
    base: np.ndarray,
    concentration: float,
    seed: int,
) -> Proposal:
    """The mixture minimising `coefficients` . predicted losses with every weight under its cap: candidates drawn
    from the distribution the sweep's mixtures came from (the law is trusted where proxies were trained, not in
    the simplex's far corners), those over a cap left out, the best TOP_AVERAGED averaged (a mean of mixtures
    under the caps is under them too). The gain over the base and its spread come from refits on bootstrap
    resamples of the proxies."""
    rng = np.random.default_rng(seed)
    laws = fit_all(weights, losses)
    alpha = np.maximum(concentration * len(base) * base, 1e-3)
    pool = np.vstack([rng.dirichlet(alpha, CANDIDATES), base[None, :]])
    pool = pool[(pool <= caps[None, :] + 1e-12).all(axis=1)]
    if len(pool) == 0:
        raise ValueError("no mixture satisfies every domain's cap: raise target.max_epochs or lower target.tokens")
    scores = predict_all(laws, pool) @ coefficients
    chosen = pool[np.argsort(scores)[:TOP_AVERAGED]].mean(axis=0)
    chosen = chosen / chosen.sum()
    if predict_all(laws, chosen[None])[0] @ coefficients > scores.min():  # the mean of the best may land worse
        chosen = pool[int(np.argmin(scores))]
    gains, at_proposal, at_base = [], [], []
    for _ in range(BOOTSTRAPS):
        sample = rng.integers(0, len(weights), len(weights))
        if len(np.unique(sample)) < 3:
            continue
        refit = fit_all(weights[sample], losses[sample])
        p, b = predict_all(refit, np.vstack([chosen, base]))
        at_proposal.append(p)
        at_base.append(b)
        gains.append(float(b @ coefficients - p @ coefficients))
    predicted, base_predicted = predict_all(laws, np.vstack([chosen, base]))
    gains_arr = np.asarray(gains)
    return Proposal(
        weights=chosen,
        predicted=predicted,
        base_predicted=base_predicted,
        objective=float(predicted @ coefficients),
        base_objective=float(base_predicted @ coefficients),
        gain_median=float(np.median(gains_arr)),
        gain_spread=_spread(gains_arr),
        gain_interval=(float(np.quantile(gains_arr, 0.05)), float(np.quantile(gains_arr, 0.95))),
        predicted_spread=_spread(np.asarray(at_proposal)),
        base_predicted_spread=_spread(np.asarray(at_base)),
    )


def _spread(x: np.ndarray) -> np.ndarray | float:
    """1.4826 x the median absolute deviation along the first axis (a standard deviation for normal data)."""
    spread = 1.4826 * np.median(np.abs(x - np.median(x, axis=0)), axis=0)
    return float(spread) if np.ndim(spread) == 0 else spread
