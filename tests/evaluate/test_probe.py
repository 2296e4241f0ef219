"""The linear probe (clapkit.evaluate.probe): separable classes fitted exactly, agreement with scikit-learn's
logistic regression, standardisation, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from clapkit.evaluate.probe import fit_linear_probe


def _blobs(seed: int, n: int = 40, d: int = 8, shift: float = 3.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * shift
    labels = [c for c in ("a", "b", "c") for _ in range(n)]
    x = np.concatenate([centres[i] + rng.normal(size=(n, d)) for i in range(3)])
    return x, labels, centres


def test_separable_classes_are_classified_on_new_samples():
    x, labels, centres = _blobs(0)
    probe = fit_linear_probe(x, labels)
    assert probe.classes == ["a", "b", "c"]
    rng = np.random.default_rng(1)
    test = np.concatenate([centres[i] + rng.normal(size=(20, x.shape[1])) for i in range(3)])
    truth = [c for c in ("a", "b", "c") for _ in range(20)]
    assert np.mean(np.array(probe.predict(test)) == np.array(truth)) >= 0.95


def test_a_feature_of_huge_scale_does_not_swamp_the_fit():
    # Standardisation: a pure-noise column 1e6 times larger than the informative ones changes nothing.
    x, labels, _ = _blobs(2)
    noisy = np.concatenate([x, np.random.default_rng(3).normal(size=(len(x), 1)) * 1e6], axis=1)
    assert fit_linear_probe(noisy, labels).predict(noisy) == fit_linear_probe(x, labels).predict(x)


def test_agrees_with_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model", reason="scikit-learn comes with `make venv` (laion-clap)")
    x, labels, _ = _blobs(4, shift=0.8)  # overlapping classes: the decision boundary matters
    mean, std = x.mean(0), x.std(0, ddof=1)
    l2 = 1e-2
    ours = fit_linear_probe(x, labels, l2=l2)
    # sklearn minimises C * sum(CE) + |w|²/2; ours mean(CE) + l2 |w|²/2  →  C = 1 / (l2 N).
    ref = sklearn.LogisticRegression(C=1 / (l2 * len(x)), max_iter=5000, tol=1e-10).fit((x - mean) / std, labels)
    agree = np.mean(np.array(ours.predict(x)) == ref.predict((x - mean) / std))
    assert agree >= 0.98
    np.testing.assert_allclose(
        ours.weight.numpy() - ours.weight.numpy().mean(0), ref.coef_ - ref.coef_.mean(0), atol=2e-3
    )


def test_bad_input_is_refused():
    x, labels, _ = _blobs(5)
    with pytest.raises(ValueError, match="do not match"):
        fit_linear_probe(x, labels[:-1])
    with pytest.raises(ValueError, match="at least two classes"):
        fit_linear_probe(x, ["a"] * len(x))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_linear_probe(bad, labels)
    with pytest.raises(ValueError, match=r"expected features \[N, 8\]"):
        fit_linear_probe(x, labels).predict(x[:, :3])
