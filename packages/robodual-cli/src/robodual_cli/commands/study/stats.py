"""Seed-paired comparisons for the studies: what a claim may rest on (issue 30, DESIGN.md section 7).

Episodes of one training seed are not independent draws of a method: seeds differ by more than the binomial
half-width. So a comparison of arms A and B is made on paired differences (the same training seed, the same
evaluation placement) and its interval comes from a two-stage cluster bootstrap: training seeds resampled with
replacement, then placements within each drawn seed. An arm with one run for all seeds (the broad generalist)
pairs with every seed of the other arm by placement.

Rows are the per-episode results committed beside every report: ``{policy, seed, task, placement, success, ...}``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError


def paired_table(rows: list[dict[str, Any]], a: str, b: str, **where: Any) -> dict[int, np.ndarray]:
    """``{seed: [n_placements] success(a) - success(b)}`` over the episodes both arms ran (``where`` filters rows,
    e.g. ``scale=5``). An arm evaluated under one seed only is paired with every seed of the other."""
    def outcomes(policy: str) -> dict[int, dict[tuple[str, int], float]]:
        by_seed: dict[int, dict[tuple[str, int], float]] = defaultdict(dict)
        for r in rows:
            if r["policy"] == policy and all(r.get(k) == v for k, v in where.items()):
                by_seed[int(r["seed"])][(r["task"], int(r["placement"]))] = float(r["success"])
        return by_seed

    oa, ob = outcomes(a), outcomes(b)
    if not oa or not ob:
        missing = a if not oa else b
        raise RobodualError(f"comparison '{a} - {b}': no episodes of '{missing}' (where {where or 'any'}); the arms "
                            f"with results are {sorted({r['policy'] for r in rows})}")
    seeds = sorted(set(oa) & set(ob))
    if not seeds:  # a single-run arm (seed < 0, or one seed against several) pairs with every seed of the other
        single_a = len(oa) == 1 and (min(oa) < 0 or len(ob) > 1)
        if single_a:
            only = next(iter(oa.values()))
            oa = {s: only for s in ob}
        elif len(ob) == 1:
            only = next(iter(ob.values()))
            ob = {s: only for s in oa}
        seeds = sorted(set(oa) & set(ob))
    table = {}
    for s in seeds:
        keys = sorted(set(oa[s]) & set(ob[s]))
        if keys:
            table[s] = np.array([oa[s][k] - ob[s][k] for k in keys])
    if not table:
        raise RobodualError(f"comparison '{a} - {b}': the arms share no (seed, placement) pair; were they evaluated "
                            "at the same placements?")
    return table


def cluster_bootstrap(table: dict[int, np.ndarray], draws: int = 10000, seed: int = 0,
                      level: float = 0.95) -> dict[str, Any]:
    """Mean paired difference with a percentile interval from resampling seeds, then placements within seeds."""
    seeds = sorted(table)
    per_seed = [float(table[s].mean()) for s in seeds]
    estimate = float(np.mean(np.concatenate([table[s] for s in seeds])))
    # vectorised over draws: each of the len(seeds) pick slots draws a seed, then resamples that seed's placements
    # independently (a seed picked twice in one draw gets two resamples)
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(seeds), size=(draws, len(seeds)))
    total, count = np.zeros(draws), np.zeros(draws)
    for k in range(len(seeds)):
        for j, s in enumerate(seeds):
            rows = np.flatnonzero(picked[:, k] == j)
            d = table[s]
            if rows.size:
                total[rows] += d[rng.integers(0, len(d), size=(rows.size, len(d)))].sum(axis=1)
                count[rows] += len(d)
    stats = total / count
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"difference": estimate, "ci95": [float(lo), float(hi)], "per_seed": dict(zip(seeds, per_seed, strict=True)),
            "seeds": len(seeds), "pairs": int(sum(len(table[s]) for s in seeds)),
            "excludes_zero": bool(lo > 0 or hi < 0), "draws": draws}


def compare(rows: list[dict[str, Any]], a: str, b: str, draws: int = 10000, seed: int = 0,
            **where: Any) -> dict[str, Any]:
    """``a - b`` in success rate, seed-paired, with its cluster-bootstrap interval."""
    return {"a": a, "b": b, "where": where, **cluster_bootstrap(paired_table(rows, a, b, **where), draws, seed)}


def parse_comparison(text: str) -> tuple[str, str]:
    """``"dual - specialist_same"`` -> ``("dual", "specialist_same")``."""
    parts = [p.strip() for p in text.split(" - ")]
    if len(parts) != 2 or not all(parts):
        raise RobodualError(f"config key 'comparisons': expected items like 'dual - specialist_same', found '{text}'")
    return parts[0], parts[1]
