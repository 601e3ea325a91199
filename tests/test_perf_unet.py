"""benchmarks/perf/perf_unet.py: its variants compute the same UNet (layouts exactly, bf16 within bf16 rounding),
and bad arguments are refused with one line."""
from __future__ import annotations

import pytest
import torch

from benchmarks.perf import perf_unet


def test_variants_compute_the_same_unet():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 900])
    outs = {}
    for variant in ("fp32", "channels_last", "bf16"):
        _, fn, to_input = perf_unet.build(variant)
        with torch.no_grad():
            outs[variant] = fn(to_input(x), t).float()
    torch.testing.assert_close(outs["channels_last"], outs["fp32"], rtol=1e-4, atol=1e-4)
    err = (outs["bf16"] - outs["fp32"]).abs().max()
    assert 0 < err < 0.1 * outs["fp32"].abs().max()  # bf16 really ran, and stays close


def test_bad_variant_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        perf_unet.main(["--variants", "fp32,int4"])
    assert e.value.code == 2 and "int4" in capsys.readouterr().err
