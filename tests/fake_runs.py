"""Hand-built runs, shaped as orchestrator.results.cells.load_runs reads them from MLflow.

Shared by the tests of the pure results code (tables, claims), which never open a store.
"""
import pandas as pd

from orchestrator.results.cells import prepare


def fake_run(i, status="FINISHED", metrics=None, start=None, **params):
    """One row as MLflow returns it: params as strings, final metrics as floats.

    Defaults are the paper's setup (a bottleneck W=32, batch 9, CIFAR-10, 200 epochs);
    the trial key is unique per `i`, start_time is i minutes in (or `start`).
    """
    p = dict(dataset="cifar10", arch="bottleneck", width=32, batch_size=9, regularizer=False,
             seed=0, epochs=200, lr=0.01, vgg_width_divisor=1, synthetic_classes=10)
    p.update(params)
    row = {"run_id": f"run{i}", "status": status, "tags.trial_key": f"key{i}",
           "start_time": pd.Timestamp("2025-01-01") + pd.Timedelta(minutes=start if start is not None else i)}
    row.update({f"params.{k}": str(v) for k, v in p.items()})
    row.update({f"metrics.{k}": float(v) for k, v in (metrics or {}).items()})
    return row


def frame(*rows):
    """Rows of fake_run as the prepared DataFrame the table builders take."""
    return prepare(pd.DataFrame(list(rows)))


class FakeForecast:
    """A memory forecast as the tables read one (trainer.forecast.Forecast's MB fields)."""

    def __init__(self, dynamic, forward, model):
        self.dynamic_peak_mb, self.forward_peak_mb, self.model_mb = dynamic, forward, model
