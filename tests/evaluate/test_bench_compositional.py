"""The multi-seed comparison's verdicts (benchmarks/bench_compositional.py): levels, margins and standard errors."""

from __future__ import annotations

import pytest

from benchmarks.bench_compositional import summarize

ARMS = ["infonce", "compa_hardneg"]


def _run(arm: str, seed: int, order: float, attribute: float, zeroshot: float) -> dict:
    results = {
        "compa_order": {"group_score": order},
        "compa_attribute": {"group_score": attribute},
        "zeroshot": {"top1": zeroshot},
    }
    return {"arm": arm, "seed": seed, "results": results}


def _targets(runs: list[dict]) -> dict[str, dict]:
    _, stats = summarize(runs, ARMS)
    return {t["metric"]: t for t in stats["targets"]}


def test_both_targets_met_with_their_statistics():
    runs = [_run("infonce", s, 0.01 + 0.01 * s, 0.003, 0.58) for s in range(5)]
    runs += [_run("compa_hardneg", s, 0.22 + 0.01 * s, 0.30 + 0.01 * s, 0.59) for s in range(5)]
    t = _targets(runs)
    attribute = t["compa_attribute.group_score"]
    assert attribute["met"] and attribute["treatment_mean"] == pytest.approx(0.32)
    assert attribute["difference"] == pytest.approx(0.317)
    # unpaired SE = sqrt(var_a / n + var_b / n): var of 0.30..0.34 = 2.5e-4, var of a constant = 0
    assert attribute["se_unpaired"] == pytest.approx((2.5e-4 / 5) ** 0.5)
    assert t["compa_order.group_score"]["met"]


def test_attribute_below_the_level_or_within_noise_is_not_met():
    # Well separated from infonce, but the mean (20 %) is under the 25 % level.
    runs = [_run("infonce", s, 0.01, 0.003, 0.58) for s in range(5)]
    runs += [_run("compa_hardneg", s, 0.2, 0.19 + 0.005 * s, 0.58) for s in range(5)]
    assert not _targets(runs)["compa_attribute.group_score"]["met"]
    # Above the level but within 2 SE of a noisy baseline.
    runs = [_run("infonce", s, 0.01, [0.0, 0.6, 0.0, 0.6, 0.1][s], 0.58) for s in range(5)]
    runs += [_run("compa_hardneg", s, 0.2, 0.30, 0.58) for s in range(5)]
    assert not _targets(runs)["compa_attribute.group_score"]["met"]


def test_one_seed_gives_no_comparison():
    runs = [_run("infonce", 0, 0.01, 0.0, 0.5), _run("compa_hardneg", 0, 0.3, 0.3, 0.5)]
    assert _targets(runs) == {}


def test_zero_shot_guard_is_judged_in_standard_errors():
    # compa_hardneg's zero-shot is 0.5 points lower in the mean, well within its noise (SE ~1.4 points): met.
    noisy = [0.57, 0.60, 0.58, 0.61, 0.59]
    runs = [_run("infonce", s, 0.01, 0.003, noisy[s]) for s in range(5)]
    runs += [_run("compa_hardneg", s, 0.22 + 0.01 * s, 0.30 + 0.01 * s, noisy[s] - 0.005) for s in range(5)]
    order = _targets(runs)["compa_order.group_score"]
    assert order["zeroshot_top1_difference"] == pytest.approx(-0.005)
    assert not order["zeroshot_top1_lower"] and order["met"]
    # Lower by 3 points with little spread (SE ~0.5 points): more than 2 SE, so not met although separated.
    runs = [_run("infonce", s, 0.01, 0.003, 0.60 + 0.005 * (s % 2)) for s in range(5)]
    runs += [_run("compa_hardneg", s, 0.22 + 0.01 * s, 0.30 + 0.01 * s, 0.57 + 0.005 * (s % 2)) for s in range(5)]
    order = _targets(runs)["compa_order.group_score"]
    assert order["zeroshot_top1_lower"] and not order["met"]
    lines, _ = summarize(runs, ARMS)
    assert "NOT met (separated; zero-shot top-1 lower by 3.0 points" in lines
