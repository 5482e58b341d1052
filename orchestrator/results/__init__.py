"""Building results: the paper's tables, figures, claims and report.md, from MLflow.

The other half of the orchestrator runs sweeps and writes to MLflow (orchestrator/run/tracking.py);
this package only reads MLflow, through `reader` (the one reader), and is otherwise pure:

    reader.py   MLflow -> runs DataFrame, run artifacts (explicit tracking URI, read-only)
    cells.py    Cell/Row/Table; `prepare`, `select`, `summarize` (runs -> one table cell)
    tables.py   the paper's tables (TABLES registry) from runs + paper.yaml
    claims.py   the paper's claims checked on our tables
    render.py   Table -> Markdown / LaTeX / CSV
    figures.py  Figures 3-5 (PNG) from run artifacts
    report.py   report.md, and `write_results`: everything above into one folder
    paper.yaml  the published numbers and training setup

Submodules are not imported here, so `cells` and `tables` load without matplotlib or MLflow.
"""


class ResultsError(ValueError):
    """Results cannot be built as asked (no such store or experiment, bad format or folder):
    the message names the input and the fix; the command line prints it as one `error:` line."""
