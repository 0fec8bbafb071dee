"""aver.train.stats (sweep statistics) against direct scipy/numpy computations, and plot_forest."""

from __future__ import annotations

import csv
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from aver.train.stats import compare, correct_clips, describe, holm, mcnemar, paired, verdict

A = [0.712, 0.695, 0.731, 0.688, 0.705, 0.719, 0.701, 0.726, 0.693, 0.710]
B = [0.701, 0.690, 0.712, 0.690, 0.689, 0.711, 0.698, 0.709, 0.680, 0.703]


@pytest.fixture(autouse=True)
def _no_warnings():
    """Every statistic here runs with warnings as errors: scipy's must never leak."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- describe -------------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.95, 0.9, 0.99])
def test_describe_matches_scipy_t_interval(confidence):
    values = [0.61, 0.64, 0.59, 0.66, 0.62]
    out = describe(values, confidence)
    arr = np.array(values)
    low, high = sps.t.interval(confidence, df=len(arr) - 1, loc=arr.mean(), scale=sps.sem(arr))
    assert out["n"] == 5
    assert out["mean"] == pytest.approx(np.mean(arr))
    assert out["std"] == pytest.approx(np.std(arr, ddof=1))
    assert out["ci_low"] == pytest.approx(low)
    assert out["ci_high"] == pytest.approx(high)
    assert all(type(out[k]) is float for k in ("mean", "std", "ci_low", "ci_high"))


def test_describe_single_value_and_constant_values():
    assert describe([0.5]) == {"mean": 0.5, "std": None, "n": 1, "ci_low": None, "ci_high": None}
    out = describe(x for x in [0.25, 0.25, 0.25])  # any iterable
    assert (out["std"], out["ci_low"], out["ci_high"]) == (0.0, 0.25, 0.25)


@pytest.mark.parametrize("bad", [[0.1, float("nan")], [float("inf"), 0.2], []])
def test_describe_rejects_non_finite_and_empty(bad):
    with pytest.raises(ValueError, match="non-finite|empty"):
        describe(bad)
    with pytest.raises(ValueError, match="confidence"):
        describe([0.1, 0.2], confidence=1.5)


def test_describe_names_the_bad_value():
    with pytest.raises(ValueError, match=r"nan.*index 1"):
        describe([0.1, float("nan")])


# -- paired ---------------------------------------------------------------------------------


def test_paired_matches_scipy():
    out = paired(A, B)
    d = np.array(A) - np.array(B)
    low, high = sps.t.interval(0.95, df=len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert out["n"] == 10
    assert out["diff"] == pytest.approx(d.mean())
    assert out["std"] == pytest.approx(d.std(ddof=1))
    assert out["ci_low"] == pytest.approx(low)
    assert out["ci_high"] == pytest.approx(high)
    assert out["p_t"] == pytest.approx(sps.ttest_rel(A, B).pvalue)
    assert out["p_wilcoxon"] == pytest.approx(sps.wilcoxon(A, B).pvalue)
    assert out["p_t"] < 0.05 and out["p_wilcoxon"] < 0.05


def test_paired_wilcoxon_with_ties_and_zeros_matches_scipy():
    a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    b = [1.0, 1.5, 2.5, 4.5, 4.0, 5.0, 6.0]  # one zero difference, tied |d|
    out = paired(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = sps.wilcoxon(a, b).pvalue
    assert out["p_wilcoxon"] == pytest.approx(expected)


def test_paired_edge_cases():
    one = paired([0.7], [0.6])
    assert one["n"] == 1 and one["diff"] == pytest.approx(0.1)
    assert (one["std"], one["ci_low"], one["ci_high"], one["p_t"], one["p_wilcoxon"]) == (None,) * 5

    zero = paired(A, A)  # scipy: NaN t-test, warning from wilcoxon
    assert (zero["diff"], zero["std"], zero["p_t"], zero["p_wilcoxon"]) == (0.0, 0.0, 1.0, 1.0)
    assert (zero["ci_low"], zero["ci_high"]) == (0.0, 0.0)

    const = paired([1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.5])  # d = 0.5 exactly: t = inf
    assert const["std"] == 0.0 and const["p_t"] == 0.0
    assert const["p_wilcoxon"] == pytest.approx(sps.wilcoxon([0.5] * 4).pvalue)


def test_paired_rejects_misaligned():
    with pytest.raises(ValueError, match="aligned"):
        paired([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="non-finite"):
        paired([0.1, float("nan")], [0.1, 0.2])


# -- holm -----------------------------------------------------------------------------------


def test_holm_hand_worked_example():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_none_entries_are_not_counted():
    out = holm([0.01, None, 0.04, None])
    assert out[1] is None and out[3] is None
    assert out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)  # m = 2
    assert holm([None]) == [None] and holm([]) == []


def test_holm_monotone_and_capped():
    rng = np.random.default_rng(0)
    p = list(rng.uniform(0, 0.3, size=12))
    adj = holm(p)
    order = np.argsort(p)
    assert all(np.diff(np.array(adj)[order]) >= 0)
    assert all(a >= r for a, r in zip(adj, p, strict=True))
    assert holm([0.5, 0.6, 0.9]) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


# -- mcnemar --------------------------------------------------------------------------------


def test_mcnemar_matches_binomtest():
    #        b: A right, B wrong (7)  c: A wrong, B right (2)   both right (5), both wrong (3)
    a = [True] * 7 + [False] * 2 + [True] * 5 + [False] * 3
    b = [False] * 7 + [True] * 2 + [True] * 5 + [False] * 3
    out = mcnemar(a, b)
    assert (out["b"], out["c"], out["n"]) == (7, 2, 17)
    assert out["p"] == pytest.approx(sps.binomtest(7, 9, 0.5).pvalue)
    assert mcnemar(b, a)["p"] == pytest.approx(out["p"])  # two-sided: symmetric


def test_mcnemar_no_discordant_clips():
    assert mcnemar([True, False], [True, False]) == {"b": 0, "c": 0, "n": 2, "p": 1.0}
    with pytest.raises(ValueError, match="aligned"):
        mcnemar([True], [True, False])


# -- verdict --------------------------------------------------------------------------------


def test_verdict_words():
    assert verdict(-0.05, 0.001, 10) == "lower (n=10)"
    assert verdict(0.05, 0.001, 10) == "higher (n=10)"
    assert verdict(0.05, 0.2, 10) == "no evidence of a difference (n=10)"
    assert verdict(0.05, 0.05, 10) == "no evidence of a difference (n=10)"  # p < alpha, strictly
    assert verdict(0.05, None, 1) == "too few runs to test (n=1)"
    assert verdict(0.05, 0.03, 10, alpha=0.01) == "no evidence of a difference (n=10)"
    # The words are about the value, for a loss too.
    assert verdict(-0.05, 0.001, 10, higher_is_better=False) == "lower (n=10)"


# -- compare --------------------------------------------------------------------------------

REF = "full"
FULL = {
    (f, s): 0.70 + 0.01 * ((3 * f + 7 * s) % 5) - 0.02
    for f in range(1, 6)
    for s in (0, 1)  # deterministic spread
}
NOISE = [0.010, -0.010, 0.005, -0.006, 0.002, -0.003, 0.008, -0.007, 0.001, -0.002]


def _records(arms=("full", "none_ife", "de3@avtca-random"), metric="f1_macro", head="fusion", skip=()):
    out = []
    for arm in arms:
        for k, (run, base) in enumerate(FULL.items()):
            if (arm, run) in skip:
                continue
            if arm == "none_ife":
                value = base - 0.05 + NOISE[k] / 4  # clearly lower
            elif arm == "de3@avtca-random":
                value = base + NOISE[k]  # same in distribution
            else:
                value = base
            out.append(
                {"arm": arm, "fold": run[0], "seed": run[1], "head": head, "metric": metric, "value": value}
            )
    return out


def _values(records, arm, metric="f1_macro"):
    return [r["value"] for r in records if r["arm"] == arm and r["metric"] == metric]


def test_compare_verdicts_and_scipy_values():
    recs = _records()
    out = compare(recs, REF)
    assert out["settings"] == {"confidence": 0.95, "alpha": 0.05, "test": "t", "family": "metric"}
    assert [r["arm"] for r in out["summary"]] == ["full", "none_ife", "de3@avtca-random"]
    assert [r["arm"] for r in out["differences"]] == ["none_ife", "de3@avtca-random"]
    lower, same = out["differences"]
    assert lower["verdict"] == "lower (n=10)"
    assert same["verdict"] == "no evidence of a difference (n=10)"
    assert lower["unpaired"] == 0 and same["unpaired"] == 0

    full = _values(recs, "full")
    for row in out["differences"]:
        arm = _values(recs, row["arm"])
        assert row["diff"] == pytest.approx(np.mean(np.array(arm) - full))
        assert row["p_t"] == pytest.approx(sps.ttest_rel(arm, full).pvalue)
        assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(arm, full).pvalue)
    p_t = [sps.ttest_rel(_values(recs, a), full).pvalue for a in ("none_ife", "de3@avtca-random")]
    assert [r["p_t_holm"] for r in out["differences"]] == pytest.approx(holm(p_t))

    summary = out["summary"][1]
    arr = np.array(_values(recs, "none_ife"))
    low, high = sps.t.interval(0.95, df=9, loc=arr.mean(), scale=sps.sem(arr))
    assert (summary["mean"], summary["ci_low"], summary["ci_high"]) == pytest.approx((arr.mean(), low, high))
    assert set(summary) == {"arm", "head", "metric", "mean", "std", "n", "ci_low", "ci_high"}
    assert set(lower) == {
        "arm", "head", "metric", "diff", "std", "n", "ci_low", "ci_high", "p_t", "p_wilcoxon",
        "p_t_holm", "p_wilcoxon_holm", "verdict", "unpaired",
    }  # fmt: skip


def test_compare_wilcoxon_uses_its_holm_p():
    out = compare(_records(), REF, test="wilcoxon")
    lower, same = out["differences"]
    assert lower["p_wilcoxon_holm"] == pytest.approx(min(1.0, 2 * sps.wilcoxon(
        _values(_records(), "none_ife"), _values(_records(), "full")).pvalue))  # fmt: skip
    assert lower["verdict"] == "lower (n=10)"
    assert same["verdict"] == "no evidence of a difference (n=10)"


def test_compare_counts_unpaired_runs():
    recs = _records(skip={("none_ife", (3, 1))})
    recs.append({"arm": REF, "fold": 6, "seed": 0, "head": "fusion", "metric": "f1_macro", "value": 0.7})
    out = compare(recs, REF)
    lower, same = out["differences"]
    assert (lower["n"], lower["unpaired"]) == (9, 2)  # its missing run + the reference's extra run
    assert (same["n"], same["unpaired"]) == (10, 1)
    assert out["summary"][0]["n"] == 11  # the summary uses every run of an arm
    full = {(r["fold"], r["seed"]): r["value"] for r in recs if r["arm"] == REF}
    pairs = [(r["value"], full[(r["fold"], r["seed"])]) for r in recs if r["arm"] == "none_ife"]
    assert lower["p_t"] == pytest.approx(sps.ttest_rel(*zip(*pairs, strict=True)).pvalue)


def test_compare_family_all_vs_metric():
    recs = _records(metric="f1_macro") + _records(metric="loss")
    by_metric = compare(recs, REF, family="metric")
    overall = compare(recs, REF, family="all")
    rows = by_metric["differences"]
    assert [(r["metric"], r["arm"]) for r in rows] == [
        ("f1_macro", "none_ife"), ("f1_macro", "de3@avtca-random"),
        ("loss", "none_ife"), ("loss", "de3@avtca-random"),
    ]  # fmt: skip
    raw = [r["p_t"] for r in rows]
    assert [r["p_t_holm"] for r in rows] == pytest.approx(holm(raw[:2]) + holm(raw[2:]))
    assert [r["p_t_holm"] for r in overall["differences"]] == pytest.approx(holm(raw))
    assert [r["p_wilcoxon_holm"] for r in overall["differences"]] == pytest.approx(
        holm([r["p_wilcoxon"] for r in rows])
    )
    assert [r["p_t_holm"] for r in rows] != pytest.approx([r["p_t_holm"] for r in overall["differences"]])
    # A loss is lower-is-better, but the verdict still speaks of the value.
    assert rows[2]["verdict"] == "lower (n=10)"


def test_compare_sorts_by_head_and_metric():
    recs = _records(head="video") + _records(head="audio", metric="uar") + _records(head="audio")
    out = compare(recs, REF)
    keys = [(r["head"], r["metric"]) for r in out["summary"]]
    assert keys == sorted(keys)
    assert [r["arm"] for r in out["summary"][:3]] == ["full", "none_ife", "de3@avtca-random"]


def test_compare_edge_cases():
    one = [r for r in _records() if (r["fold"], r["seed"]) == (1, 0)]
    out = compare(one, REF)
    assert [r["verdict"] for r in out["differences"]] == ["too few runs to test (n=1)"] * 2
    assert out["differences"][0]["p_t_holm"] is None
    assert out["summary"][0]["std"] is None

    same = _records(arms=("full",))
    same += [{**r, "arm": "copy"} for r in same]
    row = compare(same, REF)["differences"][0]
    assert (row["diff"], row["p_t"], row["p_wilcoxon"], row["p_t_holm"]) == (0.0, 1.0, 1.0, 1.0)
    assert row["verdict"] == "no evidence of a difference (n=10)"

    # An arm scored on a metric the reference lacks: nothing to pair, every run unpaired.
    lonely = _records() + [
        {"arm": "x", "fold": 1, "seed": 0, "head": "fusion", "metric": "uar", "value": 0.5}
    ]
    row = [r for r in compare(lonely, REF)["differences"] if r["metric"] == "uar"][0]
    assert (row["n"], row["unpaired"], row["diff"], row["p_t_holm"]) == (0, 1, None, None)
    assert row["verdict"] == "too few runs to test (n=0)"


def test_compare_bad_arguments():
    recs = _records()
    with pytest.raises(ValueError, match="family"):
        compare(recs, REF, family="arm")
    with pytest.raises(ValueError, match="test"):
        compare(recs, REF, test="anova")
    with pytest.raises(ValueError, match="no records"):
        compare(recs, "nonexistent")
    with pytest.raises(ValueError, match="twice|two records"):
        compare(recs + recs[:1], REF)
    with pytest.raises(ValueError, match="lacks"):
        compare([{"arm": REF, "fold": 1}], REF)
    with pytest.raises(ValueError, match="nan"):
        compare(recs + [{**recs[0], "fold": 9, "value": float("nan")}], REF)


# -- correct_clips --------------------------------------------------------------------------


def _write_predictions(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


CLASSES = ["neutral", "very_happy", "sad"]


def test_correct_clips(tmp_path):
    header = ["clip_id", "label", "prediction"] + [f"{h}_{c}" for h in ("video", "fusion") for c in CLASSES]
    rows = [
        # clip, label, prediction, video probs, fusion probs
        ["c1", "very_happy", "very_happy", 0.1, 0.2, 0.7, 0.1, 0.8, 0.1],
        ["c2", "sad", "neutral", 0.2, 0.1, 0.7, 0.6, 0.2, 0.2],
        ["c3", "neutral", "neutral", 0.5, 0.3, 0.2, 0.7, 0.2, 0.1],
        ["c4", "very_happy", "sad", 0.1, 0.8, 0.1, 0.2, 0.3, 0.5],
    ]
    path = _write_predictions(tmp_path / "predictions.csv", header, rows)
    assert correct_clips(path) == {"c1": True, "c2": False, "c3": True, "c4": False}
    assert correct_clips(path, "video") == {"c1": False, "c2": True, "c3": True, "c4": True}
    assert correct_clips(path, "fusion") == {"c1": True, "c2": False, "c3": True, "c4": False}
    with pytest.raises(ValueError, match="audio"):
        correct_clips(path, "audio")
    a, b = correct_clips(path, "video"), correct_clips(path, "fusion")
    out = mcnemar([a[c] for c in a], [b[c] for c in a])
    assert (out["b"], out["c"]) == (2, 1)


def test_correct_clips_rejects_a_regression_run(tmp_path):
    path = _write_predictions(
        tmp_path / "regression.csv",
        ["clip_id", "true_valence", "pred_valence", "fusion_valence"],
        [["c1", 0.1, 0.2, 0.2]],
    )
    with pytest.raises(ValueError, match="regression.csv"):
        correct_clips(path)


# -- plot_forest ----------------------------------------------------------------------------


def test_plot_forest_writes_png_and_svg(tmp_path):
    from aver.train.plots import plot_forest

    rows = [
        {"label": "none_ife", "diff": -0.05, "ci_low": -0.06, "ci_high": -0.04, "verdict": "lower (n=10)"},
        {"label": "de3@avtca-random $x$", "diff": 0.001, "ci_low": None, "ci_high": None,
         "verdict": "too few runs to test (n=1)"},
        {"label": "empty", "diff": None, "ci_low": None, "ci_high": None, "verdict": "too few runs to test (n=0)"},
    ]  # fmt: skip
    png = plot_forest(rows, tmp_path / "figs" / "forest.png", title="fusion f1_macro")
    assert png == tmp_path / "figs" / "forest.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = png.with_suffix(".svg")
    assert svg.stat().st_size > 0 and b"<svg" in svg.read_bytes()[:2000]
    with pytest.raises(ValueError):
        plot_forest([], tmp_path / "none.png")


def test_importing_stats_needs_no_matplotlib():
    code = "import sys, aver.train, aver.train.stats; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
