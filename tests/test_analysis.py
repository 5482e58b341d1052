"""t-SNE + LDA representation analysis (Figures 4-5) on small synthetic activations."""
import json

import numpy as np
import pytest

from sklearn.manifold import TSNE

from trainer import analysis
from trainer.analysis import lda_accuracy, representation_analysis, tsne_2d


def two_classes(n_per_class=20, dim=16, separation=8.0, seed=0):
    """Cat (3) and dog (5) activations: `separation` apart along every axis, unit noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([3, 5], n_per_class)
    x = rng.normal(size=(2 * n_per_class, dim)) + separation * (labels[:, None] == 5)
    return x.astype(np.float32), labels


def test_separable_layer_scores_high_and_noise_near_chance():
    x, labels = two_classes()
    noise = np.random.default_rng(1).normal(size=x.shape)
    result = representation_analysis({"conv": noise, "FC2": x}, labels, seed=0)
    assert result["layers"] == ["conv", "FC2"]
    assert result["labels"] == labels.tolist()
    assert np.asarray(result["embeddings"]["FC2"]).shape == (40, 2)
    assert result["lda_accuracy"]["FC2"] == 100.0
    assert result["lda_accuracy"]["conv"] < 80.0
    assert json.loads(json.dumps(result)) == result   # as the trainer writes representation_analysis.json


def test_deterministic_for_a_seed():
    x, labels = two_classes(n_per_class=8, separation=1.0)
    a = representation_analysis({"FC1": x}, labels, seed=3)
    b = representation_analysis({"FC1": x}, labels, seed=3)
    assert a == b


@pytest.mark.parametrize("n_per_class, perplexity", [
    (2, 1.0),        # N = 4: (N - 1) / 3 = 1 (the floor)
    (3, 5 / 3),      # N = 6 < sklearn's default of 30: (N - 1) / 3
    (50, 30.0),      # N = 100: sklearn's default
])
def test_perplexity_clipped_for_tiny_sets(monkeypatch, n_per_class, perplexity):
    used = []

    def spy(**kwargs):
        used.append(kwargs["perplexity"])
        return TSNE(**kwargs)

    monkeypatch.setattr(analysis, "TSNE", spy)
    x, _ = two_classes(n_per_class=n_per_class)
    embedding = tsne_2d(x)
    assert used == [pytest.approx(perplexity)]
    assert embedding.shape == (2 * n_per_class, 2) and np.isfinite(embedding).all()


def test_lda_accuracy_is_cross_validated():
    """Points of both classes interleaved on a line: no held-out fold can be separated."""
    jitter = np.random.default_rng(0).normal(scale=0.1, size=20)
    embedding = np.stack([np.arange(20.0), jitter], axis=1)
    labels = np.tile([0, 1], 10)
    assert lda_accuracy(embedding, labels) <= 60.0


@pytest.mark.parametrize("activations, labels, message", [
    ({"FC1": np.zeros((5, 3))}, np.zeros(6), "has 5 samples but there are 6 labels"),
    ({}, np.zeros(4), "at least one layer"),
    ({"FC1": np.random.default_rng(0).normal(size=(6, 3))}, np.zeros(6), "needs two classes"),
])
def test_errors_name_the_problem(activations, labels, message):
    with pytest.raises(ValueError, match=message):
        representation_analysis(activations, labels)
