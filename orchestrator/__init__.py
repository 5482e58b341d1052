"""The sweep orchestrator: sweep files (YAML) -> validated trials -> Ray Tune -> MLflow -> tables.

`python -m orchestrator {run,plan,status,tables} SWEEP`. The trainer (`trainer/`) knows
nothing of this package; this package is the only place that talks to Ray and MLflow.
"""
