"""Start-up cost: what a run imports before it needs it, and the benchmark that times the fixed cost."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

HEAVY = ("diffusers", "peft", "transformers")


def _loaded_after(code: str) -> dict:
    """Which of HEAVY a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_harness_modules_and_the_version_record_import_no_model_library():
    loaded = _loaded_after("import sqdf_bbo.run, sqdf_bbo.agents, sqdf_bbo.diffusion, sqdf_bbo.backbones, "
                           "sqdf_bbo.envs\nfrom sqdf_bbo.agents import resolve_method\n"
                           "resolve_method('sqdf'); resolve_method('random')\n"
                           "v = sqdf_bbo.run._versions()\nassert v['diffusers'] and v['peft'] and v['torch'], v")
    assert loaded == {m: False for m in HEAVY}


def test_versions_are_the_installed_distributions():
    from importlib.metadata import version

    import torch

    from sqdf_bbo.run import _versions

    v = _versions()
    assert v["torch"] == torch.__version__ == version("torch")
    assert v["sqdf_bbo"] == version("sqdf-bbo")
    assert set(v) == {"python", "torch", "numpy", "diffusers", "peft", "botorch", "gymnasium", "transformers",
                      "sqdf_bbo"}


def test_a_synthetic_run_without_lora_never_imports_diffusers_or_peft(tmp_path):
    loaded = _loaded_after("from sqdf_bbo.run import run_experiment\n"
                           f"run_experiment('levy', 'random', budget=16, out={str(tmp_path)!r}, "
                           "run_settings={'rounds': 1})")
    assert loaded == {m: False for m in HEAVY}


def test_perf_startup_row_and_append(tmp_path, capsys):
    from benchmarks.perf import perf_startup

    out = tmp_path / "perf_startup.csv"
    argv = ["--method", "random", "--budget", "16", "--repeats", "1", "--out", str(out)]
    assert perf_startup.main(argv) == 0
    assert not out.exists()  # written only when asked
    assert perf_startup.main([*argv, "--append"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and list(rows[0]) == perf_startup.COLUMNS
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(row["fixed_s"] - (row["wall_s"] - row["run_wall_s"])) < 2e-3  # one repeat: no median mixing
    assert 0 < row["import_run_s"] < row["fixed_s"] and row["render_s"] > 0 and row["versions_s"] > 0
    assert row["floor_torch_s"] > 0 and row["floor_s"] > 0  # measured (their size is for benchmarks/, not a test)
    assert row["command"].startswith("python -m sqdf_bbo.run --task levy --method random --budget 16")
    assert row["machine"] and row["load_before"] >= 0
