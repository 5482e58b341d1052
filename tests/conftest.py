"""Fixtures shared by the tests of orchestrator/results: a real MLflow SQLite store. The
tests (and the processes they start) keep measured costs in a folder of their own, never
in the user's ~/.cache."""
import os
import tempfile

import numpy as np
import pytest

from trainer.config import Config

os.environ["MANIFOLD_SWEEPS_CACHE"] = tempfile.mkdtemp(prefix="manifold-costs-")


def _timeline():
    phases = ["fwd1"] * 3 + ["fwd2"] * 2 + ["bwd2"] * 2 + ["bwd1"] * 3
    phases = (phases + ["step_end"]) * 2   # two steps, as trainer/memory.py MemoryTimeline records them
    return {"phases": ["fwd1", "fwd2", "bwd2", "bwd1"], "batch_size": 16, "arch": "bottleneck", "width": 16,
            "records": [{"step": e // 11, "event": e, "allocated_mb": 100.0 + 10 * (e % 11), "phase": p}
                        for e, p in enumerate(phases)]}


def _analysis(separation, rng):
    labels = [3] * 10 + [5] * 10
    out = {}
    for split in ("train", "test"):
        emb = {l: (rng.normal(size=(20, 2)) + separation * (np.array(labels)[:, None] == 5)).tolist()
               for l in ("conv", "FC1", "FC2")}
        out[split] = {"layers": ["conv", "FC1", "FC2"], "labels": labels, "embeddings": emb,
                      "lda_accuracy": {"conv": 50.0, "FC1": 60.0 + separation, "FC2": 65.0 + separation}}
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite MLflow store with one fake sweep `fake-smoke`, logged through mlflow's client."""
    import mlflow
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("fake-smoke", artifact_location=(root / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    specs = [  # (params, final metrics, status, artifacts)
        (dict(width=16, regularizer=False), dict(test_accuracy=40.0, generalization_gap=20.0), "FINISHED"),
        (dict(width=16, regularizer=True), dict(test_accuracy=45.0, generalization_gap=8.0), "FINISHED"),
        (dict(width=8, regularizer=False), dict(test_accuracy=30.0), "FAILED"),
        (dict(width=8, regularizer=True), dict(test_accuracy=33.0), "RUNNING"),
        (dict(arch="vgg16", width=32, regularizer=False), dict(test_accuracy=35.0, generalization_gap=9.0), "FINISHED"),
    ]
    ids = []
    for i, (params, final, status) in enumerate(specs):
        p = Config().to_dict()   # every Config key is a param, as the tracking module logs them
        p.update(dataset="synthetic", arch="bottleneck", batch_size=16, seed=0, epochs=2, vgg_width_divisor=16,
                 memory_timeline=(i == 1), representation_analysis=(i < 2))
        p.update(params)
        name = f"{p['arch']}-w{p['width']}-b16-{'reg' if p['regularizer'] else 'noreg'}"
        run = client.create_run(exp, run_name=name, tags={"trial_key": f"k{i}", "sweep": "fake-smoke",
                                                           "git_commit": "abc1234def"})
        rid = run.info.run_id
        for k, v in p.items():
            client.log_param(rid, k, v)
        for k, v in final.items():   # epoch 0 then the final epoch: the table must use the last
            client.log_metric(rid, k, v - 5.0, step=0)
            client.log_metric(rid, k, v, step=1)
        bytes_ = (134_586_664, 33_896) if p["arch"] == "vgg16" else (62_059_304, 49_848)
        client.log_metric(rid, "model_param_bytes", bytes_[0])
        client.log_metric(rid, "model_buffer_bytes", bytes_[1])
        if p["memory_timeline"]:
            client.log_dict(rid, _timeline(), "memory_timeline.json")
        if p["representation_analysis"]:
            client.log_dict(rid, _analysis(6.0 * p["regularizer"], rng), "representation_analysis.json")
        if status != "RUNNING":
            client.set_terminated(rid, status=status)
        ids.append(rid)
    return uri, ids


