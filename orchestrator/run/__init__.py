"""Running a sweep: the sweep file (sweep.py), the Ray Tune driver (driver.py) and every
MLflow write (tracking.py). Reading results back is orchestrator/results/."""
