"""Render a `cells.Table` as Markdown, LaTeX (booktabs) or CSV, ours beside the paper's.

Pure string functions. In every format a cell of ours reads `mean ± std (n=N)` (± only
for n >= 2 and tables that show spread), `— (reason)` when nothing finished, and `n/a`
where the row does not apply to the column. The CSV also has each cell's 95% interval
(Student t over seeds, n >= 2) and whether the paper's value lies inside it; Markdown and
LaTeX show both with `ci=True` (`tables --ci`). Bold marks the better method per column and
mini-batch block, as the paper does, separately for ours and for the paper's values.
"""
from __future__ import annotations

import csv
import io

from orchestrator.results.cells import Cell, Table

LEGEND = ("ours: mean ± std over seeds (n = finished runs); a missing value says why. "
          "Bold: the better method per column, as in the paper.")
CI_LEGEND = ("[a, b]: the 95% interval of our mean (Student t, n >= 2); beside the paper's value, "
             "whether it lies inside our interval.")


def _legend(ci: bool) -> str:
    return f"{LEGEND} {CI_LEGEND}" if ci else LEGEND


def _ours(cell: Cell | None, table: Table, bold: bool, pm: str, strong, escape, ci: bool) -> str:
    if cell is None:
        return "n/a"
    if cell.n == 0:
        return f"— ({escape(cell.reason)})"
    value = table.number.format(cell.mean)
    if cell.source:
        return f"{strong(value) if bold else value} ({escape(cell.source)})"
    if table.show_std and cell.n >= 2:
        value += pm + table.number.format(cell.std)
    if ci and cell.ci95:
        value += " [" + ", ".join(table.number.format(v) for v in cell.ci95) + "]"
    extra = f"n={cell.n}" + (f"; {escape(cell.reason)}" if cell.reason else "")
    return f"{strong(value) if bold else value} ({extra})"


def _paper(value: float | None, table: Table, bold: bool, strong, inside: bool | None) -> str:
    if value is None:
        return "—"
    text = table.number.format(value)
    text = strong(text) if bold else text
    return text if inside is None else f"{text} ({'inside' if inside else 'outside'} ours)"


def _grid(table: Table, pm: str, strong, escape, ci: bool) -> list[tuple[str, str, list[str]]]:
    """(group, row label, [ours, paper, ours, paper, ...]) per row, formatted."""
    bold_ours, bold_paper = table.bold()
    out = []
    for i, row in enumerate(table.rows):
        cells = []
        for j in range(len(table.columns)):
            cell = row.ours[j]
            cells.append(_ours(cell, table, bold_ours[i][j], pm, strong, escape, ci))
            inside = cell.contains(row.paper[j]) if ci and cell is not None else None
            cells.append(_paper(row.paper[j], table, bold_paper[i][j], strong, inside))
        out.append((row.group, escape(row.label), cells))
    return out


def to_markdown(table: Table, ci: bool = False) -> str:
    """A GitHub-flavoured Markdown table under a `###` title, legend and notes below."""
    header = ["Method"] + [f"{c} {who}" for c in table.columns for who in ("ours", "paper")]
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    group = None
    for g, label, cells in _grid(table, " ± ", lambda s: f"**{s}**", lambda s: s, ci):
        if g and g != group:
            lines.append(f"| *{g}* |" + " |" * (len(header) - 1))
        group = g
        lines.append("| " + " | ".join([label] + cells) + " |")
    lines += ["", _legend(ci)] + [f"Note: {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                 ("#", r"\#"), ("—", "--"), ("±", r"$\pm$")):
        s = s.replace(a, b)
    return s


def to_latex(table: Table, ci: bool = False) -> str:
    """A booktabs `table` environment (needs \\usepackage{booktabs})."""
    ncol = 1 + 2 * len(table.columns)
    lines = [r"\begin{table}[ht]", r"\centering", r"\begin{tabular}{l" + "rr" * len(table.columns) + "}",
             r"\toprule",
             "Method & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{_tex(c)}}}" for c in table.columns) + r" \\",
             " & " + " & ".join(["ours & paper"] * len(table.columns)) + r" \\", r"\midrule"]
    group = None
    for g, label, cells in _grid(table, r" $\pm$ ", lambda s: rf"\textbf{{{s}}}", _tex, ci):
        if g and g != group:
            lines.append(rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{_tex(g)}}}}} \\")
        group = g
        cells = [c.replace("—", "--") for c in cells]
        lines.append(" & ".join([label] + cells) + r" \\")
    caption = " ".join([table.title + ".", _legend(ci)] + [f"Note: {n}." for n in table.notes])
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex(caption)}}}",
              rf"\label{{tab:{table.key.replace('_', '-')}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _num(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}".rstrip("0")


CSV_COLUMNS = ["table", "group", "row", "column", "ours_mean", "ours_std", "n", "ci95_low",
               "ci95_high", "status", "paper", "paper_inside", "ours_bold", "paper_bold"]


def to_csv(table: Table, ci: bool = True) -> str:
    """One line per cell in the paper's row and column order (tidy, for pandas). The
    interval columns are always there (empty where n < 2); `ci` is accepted for symmetry."""
    bold_ours, bold_paper = table.bold()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, row in enumerate(table.rows):
        for j, column in enumerate(table.columns):
            cell = row.ours[j]
            if cell is None:
                status, mean, std, n, (low, high), inside = "n/a", None, None, "", (None, None), None
            else:
                status = cell.source or cell.reason or "ok"
                mean, std, n = cell.mean, cell.std, cell.n
                low, high = cell.ci95 or (None, None)
                inside = cell.contains(row.paper[j])
            writer.writerow([table.key, row.group, row.label, column, _num(mean), _num(std), n,
                             _num(low), _num(high), status, _num(row.paper[j]),
                             "" if inside is None else int(inside), int(bold_ours[i][j]),
                             int(bold_paper[i][j])])
    return buf.getvalue()


RENDERERS = {"md": to_markdown, "latex": to_latex, "csv": to_csv}
SUFFIX = {"md": ".md", "latex": ".tex", "csv": ".csv"}
