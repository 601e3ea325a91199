"""benchmarks/perf/perf_main.py: one real child run split into phases, and a CSV from before a column was added."""
import csv

from benchmarks.perf import perf_main


def test_a_run_is_split_into_phases_that_fit_its_wall_time(tmp_path):
    out = tmp_path / "perf_main.csv"
    old = {k: "1" for k in perf_main.COLUMNS if k not in perf_main.PHASE_COLUMNS}
    with open(out, "w", newline="") as f:  # a file from before the phase columns existed
        w = csv.DictWriter(f, fieldnames=list(old))
        w.writeheader()
        w.writerow(old)
    perf_main.main(["--task", "levy", "--method", "sqdf", "--budget", "32", "--threads", "1", "--out", str(out),
                    "--set", "updates_per_round=2", "--set", "proxy_epochs=2", "--set", "run.n_eval=16", "--profile"])
    assert "cumulative" in (tmp_path / "perf_main_profile_s0.txt").read_text()  # the child ran under cProfile
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]["task"] == "1" and rows[0]["startup_s"] == ""  # the old row is kept
    row = rows[1]
    assert list(row) == perf_main.COLUMNS and row["task"] == "levy" and row["budget"] == "32"
    phases = {k: float(row[k]) for k in perf_main.PHASE_COLUMNS}
    assert min(phases.values()) >= 0 and phases["improve_s"] > 0 and phases["startup_s"] > 0
    assert sum(phases.values()) <= float(row["wall_s"]) + 0.5  # rounding of each cell to 0.1 s
