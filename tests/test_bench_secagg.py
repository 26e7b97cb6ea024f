"""The protocol-cost benchmark runs end to end on a tiny grid and reports consistent numbers."""

from __future__ import annotations

import pytest

from codream.bench.secagg import CostSettings, hardware, mode_ratios, run, to_markdown
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
        # signature of its advertisement (64 bytes) and one consistency signature (74 bytes).
        assert (semi["k"], semi["threshold"], semi["corrupt"]) == (malicious["k"], malicious["threshold"], 1)
        assert malicious["client_bytes_sent"] - semi["client_bytes_sent"] == 64 + 74
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
