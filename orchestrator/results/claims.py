"""The paper's claims, checked on our numbers: each claim is a set of cell comparisons.

Claims are pure functions of cells.Tables (and of the Figure 4-5 analyses), so tests can
flip them by changing a number. Each comparison of ours weighs the seed noise
(orchestrator/results/stats.py): "holds" when the 95% Welch interval of the difference of
means lies on the claimed side of 0, "reversed" when it lies on the other side, "not
resolved" when it contains 0 (or a cell has one run). A claim holds only if every
comparison holds, does not hold if any is reversed, and is otherwise not resolved (or open
while cells are missing). The same comparison is applied to the paper's published values
(which carry no spread), to show what the paper claims.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.results import stats
from orchestrator.results.cells import Cell, Table
from orchestrator.results.stats import HOLDS, NOT_RESOLVED, REVERSED, Estimate


@dataclass(frozen=True)
class Check:
    label: str                       # the cell(s) the check rests on, e.g. "batch 9, W=32"
    verdict: str | None              # holds | reversed | not resolved; None: a cell has no value yet
    paper: bool | None               # None: the paper gives no number
    ours_values: tuple = ()          # our means, in the label's order
    paper_values: tuple = ()
    diff: stats.Difference | None = None   # the deciding difference (claimed larger - smaller)


@dataclass(frozen=True)
class Claim:
    text: str
    checks: tuple[Check, ...]
    paper_says: str = ""             # overrides the paper's count where it states it in words

    @property
    def verdict(self) -> str:
        measured = [c.verdict for c in self.checks if c.verdict is not None]
        if not measured:
            return "no data yet"
        if REVERSED in measured:
            return "does not hold"
        if len(measured) < len(self.checks):
            return "open (cells missing)"
        return "holds" if all(v == HOLDS for v in measured) else NOT_RESOLVED

    @property
    def holds(self) -> bool | None:
        """True: every comparison holds; False: one is reversed; None: otherwise."""
        return {"holds": True, "does not hold": False}.get(self.verdict)

    @property
    def ours(self) -> str:
        measured = [c.verdict for c in self.checks if c.verdict is not None]
        missing = len(self.checks) - len(measured)
        text = f"{measured.count(HOLDS)} of {len(measured)} hold"
        for word in (REVERSED, NOT_RESOLVED):
            if word in measured:
                text += f", {measured.count(word)} {word}"
        return text + (f" ({missing} missing)" if missing else "")

    @property
    def paper(self) -> str:
        stated = [c.paper for c in self.checks if c.paper is not None]
        return self.paper_says or f"{sum(stated)} of {len(stated)}"


def estimate(cell: Cell | None, noise: bool = True) -> Estimate | None:
    """A cell as a stats.Estimate (None: no finished value). Values the code computes, and
    cells of a table without seed noise (memory), are exact."""
    if cell is None or cell.n == 0 or cell.mean is None:
        return None
    if cell.source or not noise:
        return Estimate.of(cell.mean)
    return Estimate(cell.mean, cell.std, cell.n)


def _number(v) -> Estimate | None:
    """A plain number (an analysis' accuracy, a threshold) as an exact estimate."""
    return None if v is None else v if isinstance(v, Estimate) else Estimate.of(v)


def compare(label: str, ours: tuple, paper: tuple | bool, claimed: str) -> Check:
    """A check that ours[0] `claimed` ours[1] ('>' or '<'), and the same of the paper's.

    ours: Estimates (or plain numbers, exact); paper: the paper's two values, or its
    verdict as a bool where it states one without numbers.
    """
    return largest(label, ours, paper, 0, claimed, among=(0, 1))


def largest(label: str, ours: tuple, paper: tuple | bool, target: int, claimed: str = ">",
            among: tuple | None = None) -> Check:
    """A check that ours[target] is the largest ('>') or smallest ('<') of ours[among]:
    every comparison with another must hold; the one nearest to failing is shown."""
    among = tuple(range(len(ours))) if among is None else among
    est = [_number(v) for v in ours]
    sign = 1 if claimed == ">" else -1
    means = tuple(None if e is None else e.mean for e in est)
    verdict, diff = None, None
    if all(est[i] is not None for i in among):
        diffs = [stats.difference(est[target].scaled(sign), est[i].scaled(sign))
                 for i in among if i != target]
        verdict = stats.combined([d.verdict() for d in diffs])
        diff = min(diffs, key=lambda d: (d.low if d.low is not None else d.diff, d.diff))
    if isinstance(paper, bool):
        return Check(label, verdict, paper, means, (), diff)
    p = None
    if all(paper[i] is not None for i in among):
        p = all(sign * (paper[target] - paper[i]) > 0 for i in among if i != target)
    return Check(label, verdict, p, means, tuple(paper), diff)


def _with_vs_without(t: Table, row_key, claimed: str) -> list[Check]:
    """One check per (batch or metric block, W): regularized row vs unregularized row."""
    out = []
    for key in row_key:
        for w in t.col_keys:
            (o1, p1), (o0, p0) = t.get(key + (True,), w), t.get(key + (False,), w)
            block = f"batch {key[0]}, " if isinstance(key[0], int) else ""
            out.append(compare(f"{block}W={w}: with vs without", (estimate(o1), estimate(o0)),
                               (p1, p0), claimed))
    return out


def claims_cifar10(t1: Table | None, t2: Table | None, t3: Table | None) -> list[Claim]:
    out = []
    paper_blocks = [(9,), (7,), (5,)]
    # Checks run over every batch block, also those only we ran (e.g. the smoke sweep's 16).
    blocks = list(dict.fromkeys((r.key[0],) for t in (t1, t2) if t for r in t.rows)) or paper_blocks
    if t1:
        out.append(Claim("With the regularizer, test accuracy is higher than without, in every "
                         "CIFAR-10 cell (Table 1)", tuple(_with_vs_without(t1, blocks, ">"))))
    if t2:
        out.append(Claim("With the regularizer, the generalization gap is lower than without, in every "
                         "CIFAR-10 cell (Table 2)", tuple(_with_vs_without(t2, blocks, "<"))))
        out.append(Claim("With the regularizer the gap stays under 10% across the board (Table 2)",
                         tuple(compare(f"batch {b}, W={w}: gap vs 10%", (estimate(t2.get((b, True), w)[0]), 10.0),
                                       (t2.get((b, True), w)[1], 10.0), "<")
                               for (b,) in blocks for w in t2.col_keys)))
        cells = [(b, w) for (b,) in paper_blocks for w in t2.col_keys]
        ours = tuple(estimate(t2.get((b, False), w)[0]) for b, w in cells)
        paper = tuple(t2.get((b, False), w)[1] for b, w in cells)
        out.append(Claim("Without the regularizer the gap is largest at the narrowest W and the "
                         "smallest batch (batch 5, W=8; paper: 48.53%)",
                         (largest("batch 5, W=8 vs the other 8 unregularized cells", ours, paper,
                                  cells.index((5, 8))),)))
    if t1 and t3:
        vgg = t3.get(("test_accuracy",), 5)
        out.append(Claim("At batch 5 the regularized bottleneck beats vanilla VGG16 on CIFAR-10 "
                         "(Tables 1 and 3)",
                         tuple(compare(f"W={w}: bottleneck vs VGG16", (estimate(t1.get((5, True), w)[0]),
                                                                      estimate(vgg[0])),
                                       (t1.get((5, True), w)[1], vgg[1]), ">") for w in t1.col_keys)))
    if t3:
        bs = t3.col_keys   # 64, 16, 9, 7, 5
        acc = {b: t3.get(("test_accuracy",), b) for b in bs}
        out.append(Claim("Vanilla VGG16 accuracy falls as the mini-batch shrinks from 64 to 5 (Table 3)",
                         tuple(compare(f"batch {a} vs batch {b}", (estimate(acc[a][0]), estimate(acc[b][0])),
                                       (acc[a][1], acc[b][1]), ">") for a, b in zip(bs, bs[1:]))))
    return out


def claims_cifar100(t4: Table) -> list[Claim]:
    base_o, base_p = t4.get(("test_accuracy", "vgg16"), 32)
    return [
        Claim("On CIFAR-100 (batch 5) the regularizer gives higher accuracy for every W (Table 4)",
              tuple(_with_vs_without(t4, [("test_accuracy",)], ">"))),
        Claim("Vanilla VGG16 at batch 5 (17.87% in the paper) is below every regularized bottleneck "
              "on CIFAR-100 (Table 4, text)",
              tuple(compare(f"W={w}: VGG16 vs bottleneck", (estimate(base_o),
                                                            estimate(t4.get(("test_accuracy", True), w)[0])),
                            (base_p, t4.get(("test_accuracy", True), w)[1]), "<")
                    for w in t4.col_keys)),
    ]


def claims_memory(t5: Table | None, peaks: Table | None) -> list[Claim]:
    out = []
    if t5:
        vo, vp = t5.get(("total",), "vgg16")
        half = estimate(vo, t5.noise)
        out.append(Claim("Bottleneck model memory is under 50% of VGG16's for every W (Table 5)",
                         tuple(compare(f"W={w} vs half VGG16's total bytes",
                                       (estimate(t5.get(("total",), w)[0], t5.noise),
                                        half and half.scaled(0.5)),
                                       (t5.get(("total",), w)[1], vp and 0.5 * vp), "<")
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
        return estimate(cell, peaks.noise), paper
    claims = []
    for quantity, text in (("dynamic_peak", "Peak dynamic memory is lower with the bottleneck than "
                                            "with VGG16"),
                           ("forward_peak", "The forward-pass peak is lower with the bottleneck than "
                                            "with VGG16")):
        checks = []
        for v, r in pairs:
            (ours_r, paper_r), (ours_v, paper_v) = cells(r, quantity), cells(v, quantity)
            checks.append(compare(f"{r.label} vs {v.label}", (ours_r, ours_v), (paper_r, paper_v), "<"))
        claims.append(Claim(f"{text} (section 4.4), {where}", tuple(checks)))
    totals = []
    for v, r in pairs:
        ours_r, ours_v = cells(r, "total_peak")[0], cells(v, "total_peak")[0]
        totals.append(compare(f"{r.label} vs half {v.label}", (ours_r, ours_v and ours_v.scaled(0.5)),
                              True, "<"))
    claims.append(Claim(f"Total peak memory (model + dynamic) is over 50% smaller with the bottleneck "
                        f"(section 4.4), {where}", tuple(totals), paper_says="yes (stated; no numbers)"))
    return claims


def claims_representation(analyses: dict[str, dict]) -> list[Claim]:
    """Figure 5: LDA accuracy with > without at every bottleneck layer; near chance at conv.
    Each accuracy comes from one pair of runs and is compared as it is (no seed spread)."""
    higher, chance = [], []
    for name, pair in analyses.items():
        without, with_ = pair["without"], pair["with"]
        if without is None or with_ is None or "test" not in without or "test" not in with_:
            continue
        acc0, acc1 = without["test"]["lda_accuracy"], with_["test"]["lda_accuracy"]
        for layer in with_["test"]["layers"]:
            if layer == "conv":
                chance += [compare(f"{name} conv, {w} vs 60%", (a, 60.0), True, "<")
                           for w, a in (("without", acc0.get(layer)), ("with", acc1.get(layer)))]
            elif layer in acc0:
                higher.append(compare(f"{name} {layer}: with vs without", (acc1[layer], acc0[layer]),
                                      True, ">"))
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


def _signed(x: float) -> str:
    return f"{x:+,.2f}"


def _difference(d: stats.Difference | None) -> str:
    """"difference +4.90, 95% CI [+1.20, +8.60], n = 3 vs 3" (claimed side minus the other)."""
    if d is None:
        return ""
    n = " vs ".join("exact" if k is None else str(k) for k in d.n)
    if d.low is None:
        return f"; difference {_signed(d.diff)}, no interval (n = {n}: needs 2 runs a side)"
    if d.low == d.high:
        return f"; difference {_signed(d.diff)} (no spread)"
    return f"; difference {_signed(d.diff)}, 95% CI [{_signed(d.low)}, {_signed(d.high)}], n = {n}"


def claims_markdown(claims: list[Claim]) -> str:
    mark = {True: "yes", False: "no", None: "?"}
    lines = ["| # | Claim | Paper | Ours | Verdict |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {c.text} | {c.paper} | {c.ours} | **{c.verdict}** |" for i, c in enumerate(claims, 1)]
    lines += ["", "A comparison of ours holds when the 95% interval of the difference (Welch, over "
                  "seeds) lies on the claimed side of 0, is reversed when it lies on the other, and "
                  "is not resolved when it contains 0; the difference is the claimed-larger side "
                  "minus the other."]
    for i, c in enumerate(claims, 1):
        lines += ["", f"**{i}. {c.text}** — {c.verdict}; ours {c.ours}, paper {c.paper}.", ""]
        if c.verdict == "no data yet":
            lines.append(f"- none of its {len(c.checks)} checks has a finished run yet")
            continue
        lines += [f"- {k.label}: ours {_values(k.ours_values)}{_difference(k.diff)} → "
                  f"{k.verdict or 'missing'}; paper {_values(k.paper_values) or 'stated'} → {mark[k.paper]}"
                  for k in c.checks]
    return "\n".join(lines) + "\n"
