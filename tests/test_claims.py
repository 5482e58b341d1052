"""Claim checks flip with the numbers: a claim holds, is reversed, stays unresolved within
the seed noise, or stays open as one cell changes (3 seeds a cell, spread known)."""
import pytest

from fake_runs import FakeForecast, fake_run, frame
from orchestrator.results import claims, tables

PAPER = tables.load_paper()


def cifar10_grid(acc_with=80.0, acc_without=60.0, overrides=None, spread=(-1.0, 0.0, 1.0)):
    """All 18 Table-1 cells, one run per seed at mean + spread (std 1 for 3 seeds);
    `overrides` maps (batch, reg, W) -> mean accuracy, or None to drop the cell."""
    overrides = overrides or {}
    rows = []
    for b in (9, 7, 5):
        for w in (32, 16, 8):
            for reg in (False, True):
                a = overrides.get((b, reg, w), acc_with if reg else acc_without)
                for seed, d in enumerate(spread if a is not None else ()):
                    rows.append(fake_run(len(rows), batch_size=b, width=w, regularizer=reg, seed=seed,
                                         metrics={"test_accuracy": a + d, "generalization_gap": 100 - a - d - 15}))
    return frame(*rows)


def claim(checked, start):
    """The claim whose text starts with `start`."""
    return next(c for c in checked if c.text.startswith(start))


@pytest.mark.parametrize("name, overrides, spread, verdict, ours", [
    ("all cells agree", {}, (-1.0, 0.0, 1.0), "holds", "9 of 9 hold"),
    ("one cell flips", {(7, True, 16): 50.0}, (-1.0, 0.0, 1.0), "does not hold", "8 of 9 hold, 1 reversed"),
    ("one cell within the noise", {(7, True, 16): 61.0}, (-1.0, 0.0, 1.0), "not resolved",
     "8 of 9 hold, 1 not resolved"),
    ("one seed a cell", {}, (0.0,), "not resolved", "0 of 9 hold, 9 not resolved"),
    ("one cell missing", {(5, False, 8): None}, (-1.0, 0.0, 1.0), "open (cells missing)", "8 of 8 hold (1 missing)"),
])
def test_regularizer_accuracy_claim_flips(name, overrides, spread, verdict, ours):
    runs = cifar10_grid(overrides=overrides, spread=spread)
    built = {k: tables.TABLES[k](runs, PAPER) for k in ("table1", "table2")}
    c = claim(claims.check_claims(built, {}), "With the regularizer, test accuracy")
    assert (c.verdict, c.ours, c.paper) == (verdict, ours, "9 of 9"), name
    assert c.holds is {"holds": True, "does not hold": False}.get(verdict)


def test_comparisons_print_the_welch_interval_and_verdict():
    """80 vs 60 over 3 seeds of std 1: Welch df = 4, half-width 2.776445 * sqrt(2/3) = 2.267."""
    runs = cifar10_grid(overrides={(7, True, 16): 61.0})
    built = {"table1": tables.TABLES["table1"](runs, PAPER)}
    text = claims.claims_markdown(claims.check_claims(built, {}))
    assert ("- batch 9, W=32: with vs without: ours 80.00 vs 60.00; difference +20.00, 95% CI "
            "[+17.73, +22.27], n = 3 vs 3 → holds; paper 85.70 vs 83.67 → yes") in text
    assert "- batch 7, W=16: with vs without: ours 61.00 vs 60.00; difference +1.00, 95% CI [-1.27, +3.27]" \
           ", n = 3 vs 3 → not resolved" in text
    one = claims.claims_markdown(claims.check_claims(
        {"table1": tables.TABLES["table1"](cifar10_grid(spread=(0.0,)), PAPER)}, {}))
    assert "difference +20.00, no interval (n = 1 vs 1: needs 2 runs a side) → not resolved" in one


def test_gap_under_ten_percent_claim_flips():
    runs = cifar10_grid(acc_with=80.0)             # gap with = 5 %
    built = {"table2": tables.TABLES["table2"](runs, PAPER)}
    assert claim(claims.check_claims(built, {}), "With the regularizer the gap").holds is True
    runs = cifar10_grid(acc_with=80.0, overrides={(9, True, 8): 70.0})   # gap 15 % in one cell
    built = {"table2": tables.TABLES["table2"](runs, PAPER)}
    c = claim(claims.check_claims(built, {}), "With the regularizer the gap")
    assert (c.holds, c.ours, c.paper) == (False, "8 of 9 hold, 1 reversed", "9 of 9")
    runs = cifar10_grid(acc_with=80.0, overrides={(9, True, 8): 75.5})   # gap 9.5 +- 2.48: not resolved
    c = claim(claims.check_claims({"table2": tables.TABLES["table2"](runs, PAPER)}, {}), "With the regularizer the gap")
    assert (c.verdict, c.ours) == ("not resolved", "8 of 9 hold, 1 not resolved")


@pytest.mark.parametrize("bottleneck_bytes, holds", [(62_059_304, True), (70_000_000, False)])
def test_model_memory_claim_flips(bottleneck_bytes, holds):
    computed = tables.Computed({"vgg16": (134_586_664, 33_896),
                                **{f"bottleneck_w{w}": (bottleneck_bytes, 49_848) for w in (32, 16, 8)}})
    c = claim(claims.check_claims({"table5": tables.table5(frame(), PAPER, computed)}, {}),
              "Bottleneck model memory")
    assert (c.holds, c.paper) == (holds, "3 of 3")


@pytest.mark.parametrize("bottleneck_dynamic, holds", [(1_700.0, True), (2_500.0, False)])
def test_memory_peak_claims_flip_on_the_forecast(bottleneck_dynamic, holds):
    computed = tables.Computed(forecasts={("vgg16", 16, None): FakeForecast(2_400.0, 1_900.0, 512.0),
                                          ("bottleneck", 16, 32): FakeForecast(bottleneck_dynamic, 1_890.0, 107.0)})
    built = {"memory_peaks": tables.memory_peaks(frame(), PAPER, computed)}
    found = claims.check_claims(built, {})
    dynamic = claim(found, "Peak dynamic memory is lower with the bottleneck than with VGG16 (section 4.4), forecast")
    assert (dynamic.holds, dynamic.paper) == (holds, "1 of 1")
    forward = claim(found, "The forward-pass peak is lower with the bottleneck than with VGG16 (section 4.4), forecast")
    assert forward.holds is True                                 # 1,890 < 1,900
    measured = claim(found, "Peak dynamic memory is lower with the bottleneck than with VGG16 (section 4.4), measured")
    assert measured.verdict == "no data yet"


def analysis(acc):
    return {"test": {"layers": list(acc), "labels": [3, 5], "embeddings": {}, "lda_accuracy": acc}}


def test_lda_claims_flip():
    without = analysis({"conv": 52.0, "FC2": 70.0, "FC4": 72.0})
    better = analysis({"conv": 51.0, "FC2": 80.0, "FC4": 85.0})
    worse = analysis({"conv": 65.0, "FC2": 80.0, "FC4": 60.0})
    ok = claims.claims_representation({"run": {"without": without, "with": better}})
    assert [(c.holds, c.ours) for c in ok] == [(True, "2 of 2 hold"), (True, "2 of 2 hold")]
    bad = claims.claims_representation({"run": {"without": without, "with": worse}})
    assert [(c.holds, c.ours) for c in bad] == [(False, "1 of 2 hold, 1 reversed"), (False, "1 of 2 hold, 1 reversed")]
