"""The MLflow tracking store: the one place the orchestrator talks to MLflow.

    uri.py      which store (the precedence rule) and where a local one lives (the one parser)
    client.py   the one MLflow client, retries of a store that does not answer, store checks
    read.py     every read: experiments, runs, tags, metric histories, artifacts
    write.py    every write: experiments, runs, per-epoch metrics, cells' parent runs, figures

The names below are the tags and metrics that one side writes and the other reads; each is
defined here only. Nothing in this package imports torch, Ray or the rest of the orchestrator.
"""

TRIAL_KEY_TAG = "trial_key"           # a trial's run: the hash of its identity (run/sweep.py)
GROUP_TAG = "fused_group"             # its group's member names, in order (a resume keeps it)
GROUP_SHAPE_TAG = "group_shape"       # trainer.estimates.shape_id of the group a run trained in
HEARTBEAT_TAG = "driver_heartbeat"    # on the experiment: JSON of the driver's lease (run/lease.py)
CELL_TAG = "cell_key"                 # on a cell's parent run only (results/seeds.py): marks it
DIGEST_TAG = "cell_digest"            # of the FINISHED seeds (and last epochs) a parent summarizes
PARENT_TAG = "mlflow.parentRunId"     # MLflow's own: nests a seed run under its cell in the UI
MEASURED_PEAK = "group_peak_memory_mb"  # the trainer's per-epoch CUDA peak of the whole group
FINAL_ONLY = ("model_param_bytes", "model_buffer_bytes")   # metrics logged once, at the end


class StoreUnreachable(RuntimeError):
    """The tracking store cannot be used (it does not answer, or no MLflow store has that
    URI); the message names the URI and what to do."""


class NotInStore(ValueError):
    """A read asked for what the store does not hold (no store at that path, no experiment
    of that name); the message names it, what the store holds, and the fix."""
