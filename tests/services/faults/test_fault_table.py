"""The fault table takes the rows other fault scripts write next to its own."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.faults import markdown, other_rows


def test_rows_of_other_scripts_join_the_table(tmp_path: Path) -> None:
    (tmp_path / "faults.json").write_text(json.dumps({"rows": [{"fault": "own"}]}))
    (tmp_path / "flows.json").write_text(
        json.dumps({"rows": [{"fault": "worker killed", "requests": 10, "recover_s": 1.5}]})
    )
    (tmp_path / "consumer.json").write_text(json.dumps([{"fault": "consumer killed"}]))
    rows = other_rows(tmp_path)
    assert [(r["fault"], r["source"]) for r in rows] == [
        ("consumer killed", "consumer.json"),
        ("worker killed", "flows.json"),
    ]
    table = markdown(rows).splitlines()
    assert table[0].startswith("| fault | requests |") and len(table) == 4
    assert table[3].startswith("| worker killed | 10 |") and "| 1.5 |" in table[3]
