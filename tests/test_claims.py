"""Claim checks flip with the numbers: a claim holds, fails or stays open as one cell changes."""
import pytest

from fake_runs import fake_run, frame
from orchestrator.results import claims, tables

PAPER = tables.load_paper()


def cifar10_grid(acc_with=80.0, acc_without=60.0, overrides=None):
    """All 18 Table-1 cells; `overrides` maps (batch, reg, W) -> accuracy, or None to drop the cell."""
    overrides = overrides or {}
    rows = []
    for b in (9, 7, 5):
        for w in (32, 16, 8):
            for reg in (False, True):
                a = overrides.get((b, reg, w), acc_with if reg else acc_without)
                if a is not None:
                    rows.append(fake_run(len(rows), batch_size=b, width=w, regularizer=reg,
                                         metrics={"test_accuracy": a, "generalization_gap": 100 - a - 15}))
    return frame(*rows)


def claim(checked, start):
    """The claim whose text starts with `start`."""
    return next(c for c in checked if c.text.startswith(start))


@pytest.mark.parametrize("name, overrides, holds, ours", [
    ("all cells agree", {}, True, "9 of 9"),
    ("one cell flips", {(7, True, 16): 50.0}, False, "8 of 9"),
    ("one cell missing", {(5, False, 8): None}, None, "8 of 8 (1 missing)"),
])
def test_regularizer_accuracy_claim_flips(name, overrides, holds, ours):
    runs = cifar10_grid(overrides=overrides)
    built = {k: tables.TABLES[k](runs, PAPER) for k in ("table1", "table2")}
    c = claim(claims.check_claims(built, {}), "With the regularizer, test accuracy")
    assert (c.holds, c.ours, c.paper) == (holds, ours, "9 of 9"), name


def test_gap_under_ten_percent_claim_flips():
    runs = cifar10_grid(acc_with=80.0)             # gap with = 5 %
    built = {"table2": tables.TABLES["table2"](runs, PAPER)}
    assert claim(claims.check_claims(built, {}), "With the regularizer the gap").holds is True
    runs = cifar10_grid(acc_with=80.0, overrides={(9, True, 8): 70.0})   # gap 15 % in one cell
    built = {"table2": tables.TABLES["table2"](runs, PAPER)}
    c = claim(claims.check_claims(built, {}), "With the regularizer the gap")
    assert (c.holds, c.ours, c.paper) == (False, "8 of 9", "9 of 9")


@pytest.mark.parametrize("bottleneck_bytes, holds", [(62_059_304, True), (70_000_000, False)])
def test_model_memory_claim_flips(bottleneck_bytes, holds):
    computed = tables.Computed({"vgg16": (134_586_664, 33_896),
                                **{f"bottleneck_w{w}": (bottleneck_bytes, 49_848) for w in (32, 16, 8)}})
    c = claim(claims.check_claims({"table5": tables.table5(frame(), PAPER, computed)}, {}),
              "Bottleneck model memory")
    assert (c.holds, c.paper) == (holds, "3 of 3")


class FakeForecast:
    def __init__(self, dynamic, forward, model):
        self.dynamic_peak_mb, self.forward_peak_mb, self.model_mb = dynamic, forward, model


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
    assert [(c.holds, c.ours) for c in ok] == [(True, "2 of 2"), (True, "2 of 2")]
    bad = claims.claims_representation({"run": {"without": without, "with": worse}})
    assert [(c.holds, c.ours) for c in bad] == [(False, "1 of 2"), (False, "1 of 2")]
