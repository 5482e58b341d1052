"""Running a sweep: the sweep file (sweep.py), its fused groups (groups.py) and their GPU shares (packing.py), and the Ray
Tune driver (launch.py, driver.py). MLflow is reached through orchestrator/store/; results
are built by orchestrator/results/."""
