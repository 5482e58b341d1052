"""The runs of one experiment, read from the MLflow server and printed as one line of JSON
for checks.check_mlflow_runs. Runs inside the mlflow container (its Python has mlflow):
`docker-compose exec -T mlflow python - EXPERIMENT < read_mlflow.py`."""
import json
import os
import sys
import tempfile

from mlflow.tracking import MlflowClient


def read(client: MlflowClient, experiment: str) -> dict:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {"experiment": None, "runs": []}
    runs = []
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        artifacts = [a.path for a in client.list_artifacts(r.info.run_id)]
        error = None
        if artifacts:    # the first one, served by the server (--serve-artifacts) from its volume
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    if not os.path.exists(client.download_artifacts(r.info.run_id, artifacts[0], tmp)):
                        error = "the download left no file"
                except Exception as e:   # reported, with the others, by the check
                    error = f"{type(e).__name__}: {e}"
        runs.append({"name": r.info.run_name, "status": r.info.status, "tags": r.data.tags,
                     "metrics": len(r.data.metrics), "artifacts": artifacts, "download_error": error})
    return {"experiment": experiment, "runs": runs}


if __name__ == "__main__":
    print(json.dumps(read(MlflowClient("http://localhost:5000"), sys.argv[1])))  # its store: Postgres
