"""The benchmark scripts' own logic that could silently go stale."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_record_sections_finds_every_cut_point_in_record_lua():
    """bench/record_sections.py cuts record.lua before named top-level
    statements; an edit of the script that renames one must fail here,
    not in a benchmark run months later. Each copy ends in `return 1` and
    is a prefix of the script, one longer than the one before."""
    sys.path.insert(0, str(BENCH))
    try:
        import record_sections
    finally:
        sys.path.remove(str(BENCH))
    from exporter.store import StoreLimits, record_script

    full = record_script(StoreLimits())
    copies = record_sections.cut_copies(full)
    assert [label for label, _ in copies] == [label for label, _ in record_sections.CUTS]
    bodies = [source.removesuffix("\nreturn 1\n") for _, source in copies]
    assert all(full.startswith(body) for body in bodies)
    assert all(len(a) < len(b) for a, b in zip(bodies, bodies[1:]))
    # The first cut is past the shared prelude: the prelude is never cut.
    assert "local function push_history" in bodies[0]


def test_instructions_reads_the_newest_callgrind_dump(tmp_path):
    """bench/instructions.py takes its figure from the totals line of the
    newest dump callgrind wrote (callgrind_control -d writes a new file
    beside the first)."""
    import os

    sys.path.insert(0, str(BENCH))
    try:
        import instructions
    finally:
        sys.path.remove(str(BENCH))
    prefix = tmp_path / "worker.callgrind"
    first = tmp_path / "worker.callgrind"
    first.write_text("# callgrind format\nversion: 1\nevents: Ir\nfn=main\n0 5\ntotals: 1000\n")
    dump = tmp_path / "worker.callgrind.1"
    dump.write_text("# callgrind format\nversion: 1\nevents: Ir\nsummary: 4200\nfn=main\n0 4200\n")
    os.utime(first, (1, 1))  # older
    assert instructions.total_instructions(prefix) == 4200
    dump.write_text("# callgrind format\nevents: Ir\n")  # no totals: an error that says so
    with pytest.raises(RuntimeError, match="no totals"):
        instructions.total_instructions(prefix)


def test_compare_alternates_ingest_rounds_and_checks_the_median_round(monkeypatch):
    """bench/compare.py's phase 1: a warm-up of each server, then rounds
    that alternate which server goes first; the goal is judged on the
    median round's ratio (not the best round's) and the p99 on the worst
    round's (checks() reads those two figures). wrk is replaced by canned results: this tests the harness's
    bookkeeping, not a server."""
    sys.path.insert(0, str(BENCH))
    try:
        import compare
    finally:
        sys.path.remove(str(BENCH))
    # (cronmon req/s, p99) and the Pushgateway's req/s, per round: ratios 0.60, 0.45, 0.52.
    pings = iter([(1.0, 1.0), (600.0, 5.0), (450.0, 25.0), (520.0, 6.0)])
    pushes = iter([1.0, 1000.0, 1000.0, 1000.0])
    order = []

    def fake_pings(children, base, n, seconds, conns):
        order.append("cronmon")
        rps, p99 = next(pings)
        return {"rps": rps, "p99_ms": p99, "seconds": seconds}

    def fake_pushes(children, base, n, seconds, conns):
        order.append("pushgateway")
        return {"rps": next(pushes), "p99_ms": 30.0, "seconds": seconds}

    monkeypatch.setattr(compare, "wrk_pings", fake_pings)
    monkeypatch.setattr(compare, "wrk_pushes", fake_pushes)
    ingest = compare.ingest_rounds(None, "c", "p", 1000, 10, 3)
    assert order == ["cronmon", "pushgateway"] * 2 + ["pushgateway", "cronmon"] + ["cronmon", "pushgateway"]
    assert [round(r["ratio"], 2) for r in ingest["rounds"]] == [0.60, 0.45, 0.52]
    assert ingest["ratio"] == pytest.approx(0.52) and ingest["cronmon"]["rps"] == 520.0
    assert ingest["worst_cronmon_p99_ms"] == 25.0
