"""The protocol-cost benchmark runs end to end on a tiny grid and reports consistent numbers."""

from __future__ import annotations

import pytest

from codream.bench.secagg import CostSettings, hardware, mode_ratios, run, to_markdown
from codream.bench.secagg_scale import ScaleSettings, fitted_exponent, run_scale, scale_to_markdown
from codream.exceptions import ConfigError


def test_a_tiny_grid_yields_one_row_per_point_with_positive_costs():
    settings = CostSettings(
        ns=(4,), ds=(64,), dropouts=(0.0, 0.3), graphs=("complete",), repeats=1, flower=False
    )
    rows = run(settings)
    assert [(r["n"], r["d"], r["dropout"], r["mode"]) for r in rows] == [
        (4, 64, 0.0, "semi-honest"),
        (4, 64, 0.0, "malicious"),
        (4, 64, 0.3, "semi-honest"),
        (4, 64, 0.3, "malicious"),
    ]
    for semi, malicious in zip(rows[::2], rows[1::2], strict=True):
        # The same session in both modes: same k, t and c; a malicious client also sends the
        # signatures of its advertisement and of its share commitments (64 bytes each) and one
        # consistency signature (74 bytes).
        assert (semi["k"], semi["threshold"], semi["corrupt"]) == (malicious["k"], malicious["threshold"], 1)
        assert malicious["client_bytes_sent"] - semi["client_bytes_sent"] == 64 + 64 + 74
    ratios = mode_ratios(rows)
    assert len(ratios) == 2 and all(q["client_bytes_sent_ratio"] > 1 for q in ratios)
    for row in rows:
        assert row["threshold"] <= row["n"]
        if not row["aborted"]:
            assert row["client_bytes_sent"] > 64  # at least the masked words, plus keys and shares
            assert row["server_s"] >= 0 and row["client_s"] >= 0
        assert row["prg_bound_s"] > 0 and row["mask_over_prg"] > 0
    doc = to_markdown(rows, command="codream bench secagg (tiny grid)", machine=hardware())
    assert "codream bench secagg (tiny grid)" in doc and "## Malicious over semi-honest" in doc


def test_an_impossible_grid_is_refused_with_a_reason():
    with pytest.raises(ConfigError, match="n >= 3"):
        CostSettings(ns=(2,), ds=(10,))
    with pytest.raises(ConfigError, match="graphs"):
        CostSettings(ns=(3,), ds=(10,), graphs=("star",))
    with pytest.raises(ConfigError, match="modes"):
        CostSettings(ns=(3,), ds=(10,), modes=("paranoid",))


def test_the_scale_grid_reports_per_party_cpu_bytes_exponents_and_masking():
    # k = 8, t = 6: a client aborts only if 3 of its 8 neighbours drop, and at most 2 ever do here,
    # whatever graph the session id draws.
    settings = ScaleSettings(
        ns=(16, 32),
        d=64,
        fixed_k=8,
        fixed_t=6,
        fixed_dropouts=(0.0, 0.0625),
        rule_ns=(6,),
        rule_dropouts=(0.0,),
        mask_ds=(64, 128),
        repeats=1,
        flower=False,
    )
    result = run_scale(settings)
    rows = result["rows"]
    assert [(r["sweep"], r["n"], r["dropout"]) for r in rows] == [
        ("fixed k", 16, 0.0),
        ("fixed k", 32, 0.0),
        ("fixed k", 16, 0.0625),
        ("fixed k", 32, 0.0625),
        ("rule", 6, 0.0),
    ]
    for row in rows:
        assert row["aborted"] is None and row["skipped"] is None
        assert row["survivors"] == row["n"] - row["dropped"]
        assert 0 < row["client_setup_s_mean"] <= row["client_s_mean"] <= row["client_s_max"]
        assert row["server_s"] == pytest.approx(row["server_setup_s"] + row["server_vector_s"])
        assert row["server_bytes_received"] > row["survivors"] * 64 * 4  # the masked words at least
    assert rows[1]["dropped"] == 0 and rows[3]["dropped"] == 2
    fixed = [f for f in result["fits"] if f["sweep"] == "fixed k"]
    assert [f["ns"] for f in fixed] == [[16, 32], [16, 32]] and all(f["server"] is not None for f in fixed)
    assert [m["d"] for m in result["masking"]] == [64, 128]
    assert all(m["keystream_gb_per_s"] > 0 and m["mask_over_prg"] > 1 for m in result["masking"])
    doc = scale_to_markdown(result, command="codream bench secagg --scale (tiny)", machine=hardware())
    assert "codream bench secagg --scale (tiny)" in doc and "| fixed k | 32 | 0.0625 | 8 | 6 |" in doc


def test_a_scale_point_predicted_past_the_budget_is_skipped_and_says_so():
    settings = ScaleSettings(
        ns=(8, 16, 1024), d=32, fixed_k=4, fixed_t=4, fixed_dropouts=(0.0,), rule_ns=(), rule_dropouts=(),
        mask_ds=(32,), repeats=1, max_point_seconds=1.0, flower=False,
    )  # fmt: skip
    rows = run_scale(settings)["rows"]
    assert [r["skipped"] is None for r in rows] == [True, True, False]
    assert rows[2]["skipped"].startswith("predicted") and "server_s" not in rows[2]


def test_the_fitted_exponent_recovers_a_power_law():
    ns = [100, 200, 400, 800]
    assert fitted_exponent(ns, [3e-6 * n**1.5 for n in ns]) == pytest.approx(1.5)
    assert fitted_exponent([100], [1.0]) is None


def test_an_impossible_scale_grid_is_refused():
    with pytest.raises(ConfigError, match="increasing"):
        ScaleSettings(ns=(100, 50))
    with pytest.raises(ConfigError, match="even k"):
        ScaleSettings(fixed_k=31)
    with pytest.raises(ConfigError, match="more than"):
        ScaleSettings(ns=(20, 40), fixed_k=32)
