"""Representation analysis of Figures 4-5 (paper section 4.5): t-SNE + LDA per layer.

For the cat and dog samples, the activations at the conv output and at each bottleneck
layer are embedded in 2-D with t-SNE (Figure 4), and a linear discriminant is scored on
that 2-D embedding (Figure 5). `analyze` gathers a network's activations; the rest is pure
numpy/scikit-learn. The trainer calls it at the end of a run and the orchestrator writes the
result to MLflow as `representation_analysis.json`
({"train": <result>, "test": <result>}; the shape is documented in orchestrator/results/figures.py).
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.manifold import TSNE
from sklearn.model_selection import StratifiedKFold, cross_val_score

ANALYSIS_BATCH = 1000    # 32x32 images per forward pass when gathering activations
TSNE_PERPLEXITY = 30.0   # sklearn's default; clipped to (N - 1) / 3 for small N
LDA_FOLDS = 5            # folds of the cross-validated LDA accuracy (fewer if a class is smaller)


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, D) activations -> (N, 2) t-SNE embedding, deterministic for a given seed.

    Perplexity must be below N; we use min(30, (N - 1) / 3), which keeps roughly three
    effective neighbours per perplexity unit for the small sample sets of the tests.
    """
    n = x.shape[0]
    perplexity = min(TSNE_PERPLEXITY, max(1.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed)
    return tsne.fit_transform(np.asarray(x, dtype=np.float64).reshape(n, -1))


def lda_accuracy(embedding: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Accuracy (%) of LinearDiscriminantAnalysis on a 2-D embedding, cross-validated.

    Measured as the mean test-fold accuracy of stratified, shuffled k-fold cross-validation
    with k = min(5, size of the smaller class): the paper (Fig. 5) reports "the accuracy of
    the discriminant" without saying on which samples; scoring on held-out folds keeps a
    linear classifier on 2 dimensions honest. 50% is chance for two balanced classes.
    """
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2:
        raise ValueError(f"lda_accuracy needs two classes; got labels {sorted(set(labels.tolist()))}")
    folds = min(LDA_FOLDS, int(counts.min()))
    if folds < 2:
        raise ValueError(f"lda_accuracy needs >= 2 samples per class; class sizes are {counts.tolist()}")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(LinearDiscriminantAnalysis(), embedding, labels, cv=cv)
    return float(100.0 * scores.mean())


def representation_analysis(activations: dict[str, np.ndarray], labels: np.ndarray,
                            seed: int = 0) -> dict:
    """t-SNE embedding and LDA accuracy of each layer's activations (Figures 4-5).

    activations: layer name ("conv", "FC1".."FC10") -> (N, D) float array, the same N
        samples (cat and dog) in the same order for every layer; order of the dict is
        the order of the layers in the network.
    labels: (N,) int class ids of those samples (e.g. CIFAR-10 cat=3, dog=5).
    Returns a JSON-ready dict:
        {"layers": [name, ...], "labels": [int, ...] (N),
         "embeddings": {name: [[x, y], ...] (N)},
         "lda_accuracy": {name: float, % (see lda_accuracy)}}
    """
    labels = np.asarray(labels).astype(int).reshape(-1)
    if not activations:
        raise ValueError("representation_analysis needs at least one layer of activations")
    result = {"layers": list(activations), "labels": labels.tolist(), "embeddings": {},
              "lda_accuracy": {}}
    for layer, x in activations.items():
        x = np.asarray(x)
        if x.shape[0] != labels.shape[0]:
            raise ValueError(f"layer {layer!r} has {x.shape[0]} samples but there are "
                             f"{labels.shape[0]} labels")
        embedding = tsne_2d(x, seed=seed)                     # (N, 2)
        result["embeddings"][layer] = embedding.round(4).tolist()
        result["lda_accuracy"][layer] = round(lda_accuracy(embedding, labels, seed=seed), 4)
    return result


@torch.no_grad()
def analyze(model, data, cfg) -> dict:
    """Figures 4-5 for one trained network (a trainer.model.Net) on its data
    (trainer.data.Data) and config: t-SNE + LDA of the cat (3) and dog (5) activations at the
    conv output and every head layer, for the training and the test set."""
    model.eval()
    dtype = getattr(torch, cfg.dtype)
    out = {}
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        idx = torch.cat([(y == c).nonzero()[:cfg.analysis_samples, 0] for c in (3, 5)])
        chunks = idx.split(max(1, ANALYSIS_BATCH // (cfg.image_size // 32) ** 2))
        feats = [torch.cat(f) for f in zip(*(model(data.normalize(x[c], dtype, cfg.image_size))[1]
                                           for c in chunks))]
        names = ["conv"] + [f"FC{k}" for k in range(1, len(feats))]
        acts = {n: f.float().cpu().numpy() for n, f in zip(names, feats)}
        out[split] = representation_analysis(acts, y[idx].cpu().numpy(), seed=cfg.seed)
    return out
