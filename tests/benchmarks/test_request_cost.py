"""`benchmarks.request_cost` times every piece on the proxy's own objects, without a server."""

from __future__ import annotations

from benchmarks import request_cost


def test_every_piece_is_timed() -> None:
    figures = dict(request_cost.pieces(number=20, repeat=1))
    assert "parse + validate the body" in figures
    assert "coalescer: queue, batch, answer" in figures
    assert all(micros > 0 for name, micros in figures.items() if not name.startswith("coalescer"))


def test_main_prints_one_table_row_per_piece(capsys) -> None:
    assert request_cost.main(["--number", "10", "--repeat", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "µs" not in line]
    assert len(rows) == len(request_cost.pieces(number=10, repeat=1))
