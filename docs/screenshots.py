"""The README's MLflow UI screenshots, taken in a real browser (headless Chromium).

    python -m orchestrator run docs/seeds-demo.yaml --tracking-uri sqlite:///$PWD/demo.db
    pip install playwright               # the Python driver only; the browser is Debian's
    apt-get install chromium             # (or pass --chromium PATH)
    python docs/screenshots.py sqlite:///$PWD/demo.db seeds-demo

starts `mlflow ui` on the store, opens the experiment's runs page, expands each cell's
row to show its seeds (docs/mlflow-cells.png), then opens the chart view of the cells'
mean curves (docs/mlflow-cell-charts.png). It prints what the page shows, so a run without
a display can be checked too.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time
import urllib.request

from mlflow.tracking import MlflowClient

DOCS = pathlib.Path(__file__).resolve().parent


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlflow ui exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow ui did not answer at {url} within {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tracking_uri")
    ap.add_argument("experiment")
    ap.add_argument("--port", type=int, default=5055)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    exp = MlflowClient(args.tracking_uri).get_experiment_by_name(args.experiment)
    if exp is None:
        sys.exit(f"no experiment {args.experiment!r} at {args.tracking_uri}")
    url = f"http://127.0.0.1:{args.port}"
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri,
                           "--host", "127.0.0.1", "--port", str(args.port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(url, ui)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 620})
            page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
            page.get_by_text("Run Name").wait_for(timeout=60_000)
            close = page.get_by_role("button", name="Close")       # the assistant's side panel
            if close.count():
                close.first.click()
            # a parent run's row has an expander in its name cell (MLflow's runNameCellRenderer)
            for expander in page.locator("button[data-component-id*='runnamecellrenderer']").all():
                expander.click()
                page.wait_for_timeout(500)
            page.wait_for_timeout(2000)
            page.screenshot(path=str(DOCS / "mlflow-cells.png"))
            print(page.inner_text("main") if page.locator("main").count() else page.inner_text("body"))
            # the chart view, filtered to the cells' mean curves (the seeds are folded away)
            page.set_viewport_size({"width": 1500, "height": 900})
            page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
                      f"&compareRunsMode=CHART")
            search = page.get_by_placeholder("Search metric charts")
            search.wait_for(timeout=60_000)
            close = page.get_by_role("button", name="Close")
            if close.count():
                close.first.click()
            search.fill("accuracy_mean")
            page.wait_for_timeout(6000)
            page.screenshot(path=str(DOCS / "mlflow-cell-charts.png"))
            browser.close()
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    print(f"wrote {DOCS / 'mlflow-cells.png'} and {DOCS / 'mlflow-cell-charts.png'}")


if __name__ == "__main__":
    main()
