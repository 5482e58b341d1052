"""Building results: the paper's tables, figures, claims and report.md, from MLflow.

The other half of the orchestrator runs sweeps (orchestrator/run/). This package reads
MLflow through orchestrator/store/read.py and writes only the cells' parent runs and the
figures (store/write.py, when asked); the rest is pure:

    cells.py    Cell/Row/Table; `load_runs` (MLflow -> prepared runs), `prepare`, `select`,
                `summarize` (runs -> one table cell)
    tables.py   the paper's tables (TABLES registry) from runs + paper.yaml
    claims.py   the paper's claims checked on our tables
    render.py   Table -> Markdown / LaTeX / CSV
    figures.py  Figures 3-5 (PNG) from run artifacts
    report.py   report.md, and `write_results`: everything above into one folder
    paper.yaml  the published numbers and training setup

Submodules are not imported here, so `cells` and `tables` load without matplotlib or MLflow.
"""


class ResultsError(ValueError):
    """Results cannot be built as asked (bad format or folder, sweeps that disagree):
    the message names the input and the fix; the command line prints it as one `error:` line."""
