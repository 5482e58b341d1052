"""The paper's claims, checked on our numbers: each claim is a set of cell comparisons.

Claims are pure functions of cells.Tables (and of the Figure 4-5 analyses), so tests can
flip them by changing a number. A claim holds when every cell it rests on agrees, does not
hold when any measured cell disagrees, and is open while cells are missing. The same
comparison is applied to the paper's published values, to show what the paper claims.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.results.cells import Cell, Table


@dataclass(frozen=True)
class Check:
    label: str                       # the cell(s) the check rests on, e.g. "batch 9, W=32"
    ours: bool | None                # None: a cell has no finished value yet
    paper: bool | None               # None: the paper gives no number
    ours_values: tuple = ()
    paper_values: tuple = ()


@dataclass(frozen=True)
class Claim:
    text: str
    checks: tuple[Check, ...]
    paper_says: str = ""             # overrides the paper's count where it states it in words

    @property
    def holds(self) -> bool | None:
        measured = [c.ours for c in self.checks if c.ours is not None]
        if False in measured:
            return False
        return True if measured and len(measured) == len(self.checks) else None

    @property
    def verdict(self) -> str:
        if not any(c.ours is not None for c in self.checks):
            return "no data yet"
        return {True: "holds", False: "does not hold", None: "open (cells missing)"}[self.holds]

    @property
    def ours(self) -> str:
        measured = [c.ours for c in self.checks if c.ours is not None]
        missing = len(self.checks) - len(measured)
        return f"{sum(measured)} of {len(measured)}" + (f" ({missing} missing)" if missing else "")

    @property
    def paper(self) -> str:
        stated = [c.paper for c in self.checks if c.paper is not None]
        return self.paper_says or f"{sum(stated)} of {len(stated)}"


def _mean(cell: Cell | None) -> float | None:
    return cell.mean if cell is not None and cell.n > 0 else None


def check(label: str, ours: tuple, paper: tuple | bool, pred) -> Check:
    """Apply `pred` to our means and to the paper's values (None where any is missing).

    paper: the paper's values, or its verdict as a bool where it states one without numbers.
    """
    o = bool(pred(*ours)) if all(v is not None for v in ours) else None
    if isinstance(paper, bool):
        return Check(label, o, paper, ours, ())
    p = bool(pred(*paper)) if all(v is not None for v in paper) else None
    return Check(label, o, p, ours, paper)


def _with_vs_without(t: Table, row_key, pred) -> list[Check]:
    """One check per (batch or metric block, W): regularized row vs unregularized row."""
    out = []
    for key in row_key:
        for w in t.col_keys:
            (o1, p1), (o0, p0) = t.get(key + (True,), w), t.get(key + (False,), w)
            block = f"batch {key[0]}, " if isinstance(key[0], int) else ""
            out.append(check(f"{block}W={w}", (_mean(o1), _mean(o0)), (p1, p0), pred))
    return out


def claims_cifar10(t1: Table | None, t2: Table | None, t3: Table | None) -> list[Claim]:
    out = []
    paper_blocks = [(9,), (7,), (5,)]
    # Checks run over every batch block, also those only we ran (e.g. the smoke sweep's 16).
    blocks = list(dict.fromkeys((r.key[0],) for t in (t1, t2) if t for r in t.rows)) or paper_blocks
    if t1:
        out.append(Claim("With the regularizer, test accuracy is higher than without, in every "
                         "CIFAR-10 cell (Table 1)", tuple(_with_vs_without(t1, blocks, lambda a, b: a > b))))
    if t2:
        out.append(Claim("With the regularizer, the generalization gap is lower than without, in every "
                         "CIFAR-10 cell (Table 2)", tuple(_with_vs_without(t2, blocks, lambda a, b: a < b))))
        out.append(Claim("With the regularizer the gap stays under 10% across the board (Table 2)",
                         tuple(check(f"batch {b}, W={w}", (_mean(t2.get((b, True), w)[0]),),
                                     (t2.get((b, True), w)[1],), lambda g: g < 10.0)
                               for (b,) in blocks for w in t2.col_keys)))
        cells = [(b, w) for (b,) in paper_blocks for w in t2.col_keys]
        ours = tuple(_mean(t2.get((b, False), w)[0]) for b, w in cells)
        paper = tuple(t2.get((b, False), w)[1] for b, w in cells)
        worst = cells.index((5, 8))
        out.append(Claim("Without the regularizer the gap is largest at the narrowest W and the "
                         "smallest batch (batch 5, W=8; paper: 48.53%)",
                         (check("batch 5, W=8 vs the other 8 unregularized cells", ours, paper,
                                lambda *g: max(range(len(g)), key=g.__getitem__) == worst),)))
    if t1 and t3:
        out.append(Claim("At batch 5 the regularized bottleneck beats vanilla VGG16 on CIFAR-10 "
                         "(Tables 1 and 3)",
                         tuple(check(f"W={w}", (_mean(t1.get((5, True), w)[0]), _mean(t3.get(("test_accuracy",), 5)[0])),
                                     (t1.get((5, True), w)[1], t3.get(("test_accuracy",), 5)[1]),
                                     lambda a, b: a > b) for w in t1.col_keys)))
    if t3:
        bs = t3.col_keys   # 64, 16, 9, 7, 5
        out.append(Claim("Vanilla VGG16 accuracy falls as the mini-batch shrinks from 64 to 5 (Table 3)",
                         tuple(check(f"batch {a} > batch {b}",
                                     (_mean(t3.get(("test_accuracy",), a)[0]), _mean(t3.get(("test_accuracy",), b)[0])),
                                     (t3.get(("test_accuracy",), a)[1], t3.get(("test_accuracy",), b)[1]),
                                     lambda x, y: x > y) for a, b in zip(bs, bs[1:]))))
    return out


def claims_cifar100(t4: Table) -> list[Claim]:
    base_o, base_p = t4.get(("test_accuracy", "vgg16"), 32)
    return [
        Claim("On CIFAR-100 (batch 5) the regularizer gives higher accuracy for every W (Table 4)",
              tuple(_with_vs_without(t4, [("test_accuracy",)], lambda a, b: a > b))),
        Claim("Vanilla VGG16 at batch 5 (17.87% in the paper) is below every regularized bottleneck "
              "on CIFAR-100 (Table 4, text)",
              tuple(check(f"W={w}", (_mean(base_o), _mean(t4.get(("test_accuracy", True), w)[0])),
                          (base_p, t4.get(("test_accuracy", True), w)[1]), lambda v, b: v < b)
                    for w in t4.col_keys)),
    ]


def claims_memory(t5: Table | None, peaks: Table | None) -> list[Claim]:
    out = []
    if t5:
        vo, vp = t5.get(("total",), "vgg16")
        out.append(Claim("Bottleneck model memory is under 50% of VGG16's for every W (Table 5)",
                         tuple(check(f"W={w} / VGG16 total bytes", (_mean(t5.get(("total",), w)[0]), _mean(vo)),
                                     (t5.get(("total",), w)[1], vp), lambda b, v: b < 0.5 * v)
                               for w in t5.col_keys[1:])))
    if peaks:
        for source, where in (("forecast", "forecast"), ("measured", "measured on a GPU")):
            out += _peak_claims(peaks, source, where)
    return out


def _peak_claims(peaks: Table, source: str, where: str) -> list[Claim]:
    """Section 4.4's memory claims on one of our two columns (forecast or measured): each
    bottleneck row against the VGG16 row of its batch size."""
    pairs = [(v, r) for v in peaks.rows if v.key[0] == "vgg16"
             for r in peaks.rows if r.key[0] == "bottleneck" and r.key[1] == v.key[1]]

    def cells(row, quantity):
        cell, paper = peaks.get(row.key, (quantity, source))
        return _mean(cell), paper
    claims = []
    for quantity, text in (("dynamic_peak", "Peak dynamic memory is lower with the bottleneck than "
                                            "with VGG16"),
                           ("forward_peak", "The forward-pass peak is lower with the bottleneck than "
                                            "with VGG16")):
        checks = []
        for v, r in pairs:
            (ours_r, paper_r), (ours_v, paper_v) = cells(r, quantity), cells(v, quantity)
            checks.append(check(f"{r.label} vs {v.label}", (ours_r, ours_v), (paper_r, paper_v),
                                lambda a, b: a < b))
        claims.append(Claim(f"{text} (section 4.4), {where}", tuple(checks)))
    totals = tuple(check(f"{r.label} vs {v.label}", (cells(r, "total_peak")[0], cells(v, "total_peak")[0]),
                         True, lambda a, b: a < 0.5 * b) for v, r in pairs)
    claims.append(Claim(f"Total peak memory (model + dynamic) is over 50% smaller with the bottleneck "
                        f"(section 4.4), {where}", totals, paper_says="yes (stated; no numbers)"))
    return claims


def claims_representation(analyses: dict[str, dict]) -> list[Claim]:
    """Figure 5: LDA accuracy with > without at every bottleneck layer; near chance at conv."""
    higher, chance = [], []
    for name, pair in analyses.items():
        without, with_ = pair["without"], pair["with"]
        if without is None or with_ is None or "test" not in without or "test" not in with_:
            continue
        acc0, acc1 = without["test"]["lda_accuracy"], with_["test"]["lda_accuracy"]
        for layer in with_["test"]["layers"]:
            if layer == "conv":
                chance += [check(f"{name} conv, {w}", (a,), True, lambda x: x < 60.0)
                           for w, a in (("without", acc0.get(layer)), ("with", acc1.get(layer)))]
            elif layer in acc0:
                higher.append(check(f"{name} {layer}", (acc1[layer], acc0[layer]), True,
                                    lambda a, b: a > b))
    if not analyses:
        return []
    return [Claim("LDA on test t-SNE is more accurate with the regularizer at every bottleneck "
                  "layer (Figure 5)", tuple(higher), paper_says="yes at FC2..FC10 (read off the figure)"),
            Claim("LDA on the conv output is near chance (< 60%) with and without (Figure 5)",
                  tuple(chance), paper_says="yes (read off the figure)")]


def check_claims(built: dict[str, Table], analyses: dict[str, dict]) -> list[Claim]:
    """Every claim whose tables (or figures) were built."""
    out = claims_cifar10(built.get("table1"), built.get("table2"), built.get("table3"))
    if "table4" in built:
        out += claims_cifar100(built["table4"])
    return out + claims_memory(built.get("table5"), built.get("memory_peaks")) + claims_representation(analyses)


def _values(v: tuple) -> str:
    return " vs ".join("—" if x is None else f"{x:,.2f}" for x in v)


def claims_markdown(claims: list[Claim]) -> str:
    mark = {True: "yes", False: "no", None: "?"}
    lines = ["| # | Claim | Paper | Ours | Verdict |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {c.text} | {c.paper} | {c.ours} | **{c.verdict}** |" for i, c in enumerate(claims, 1)]
    for i, c in enumerate(claims, 1):
        lines += ["", f"**{i}. {c.text}** — {c.verdict}; ours {c.ours}, paper {c.paper}.", ""]
        if c.verdict == "no data yet":
            lines.append(f"- none of its {len(c.checks)} checks has a finished run yet")
            continue
        lines += [f"- {k.label}: ours {_values(k.ours_values)} → {mark[k.ours]}; paper "
                  f"{_values(k.paper_values) or 'stated'} → {mark[k.paper]}"
                  for k in c.checks]
    return "\n".join(lines) + "\n"

