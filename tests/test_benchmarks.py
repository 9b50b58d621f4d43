"""The benchmark harness keeps working: every row is reported, well formed. Never a timing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks.__main__ import END, START, update_readme

ROOT = Path(__file__).resolve().parent.parent
#: The issue's 13 variants, in order (a row per path compared).
ROWS = ["1", "2", "3", "4", "5", "6", "7a", "7b", "8a", "8b", "8c", "8d"]
ROWS += ["9a", "9b", "9c", "9d", "9e", "9f", "10a", "10b", "10c", "11a", "11b", "11c"]
ROWS += ["12a", "12b", "13a", "13b", "13c", "13d", "14a", "14b", "14c", "14d", "14e", "14f", "14g"]
#: Rows measured without a baseline to compare with.
BASELINES = {"1", "8a", "9a", "9e", "10a", "11a", "11b", "11c", "12a", "14a"}
#: Rows that may be skipped: an optional package (grpc-interceptor) or the aio front end missing.
OPTIONAL = {"5", "8c", "8d", "9f", "11c"}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_run_reports_every_row_well_formed(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert {"cpu", "cores", "python", "versions", "date"} <= set(result["machine"])
    assert {"grpcio", "clarifai-grpc", "tenacity"} <= set(result["machine"]["versions"])
    assert [row["row"] for row in result["rows"]] == ROWS
    for row in result["rows"]:
        assert f"| {row['row']} | {row['label']} |" in done.stdout
        if "skipped" in row:
            assert row["row"] in OPTIONAL, row
            continue
        assert row["metrics"], row
        assert all(_number(value) for value in row["metrics"].values()), row
        assert all(_number(value) for value in row["ratios"].values()), row
        assert row["ratios"] or row["row"] in BASELINES, row
        assert all(isinstance(target["met"], bool) for target in row["targets"]), row
    assert "Targets:" in done.stdout


def test_readme_block_is_replaced_between_the_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{START}\nold table\n{END}\n\nAfter.\n", encoding="utf-8")
    assert update_readme(readme, "| new | table |")
    assert readme.read_text(encoding="utf-8") == (
        f"# Title\n\n{START}\n| new | table |\n{END}\n\nAfter.\n"
    )


def test_readme_without_markers_is_left_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nNo markers here.\n", encoding="utf-8")
    assert not update_readme(readme, "| new | table |")
    assert readme.read_text(encoding="utf-8") == "# Title\n\nNo markers here.\n"
