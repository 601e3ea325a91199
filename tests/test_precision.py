"""run.precision: bf16 autocast of the backbones' forward pass (fp32 default, 'auto' only where bf16 is native)."""
from __future__ import annotations

import json

import torch

from sqdf_bbo.backbones import base
from sqdf_bbo.run import main


def test_bf16_forward_is_close_to_fp32_and_returns_float32():
    from diffusers import UNet2DModel

    from sqdf_bbo.backbones.unet import PixelUNet, unet_config

    torch.manual_seed(0)
    model = PixelUNet(UNet2DModel(**unet_config(8))).eval()
    x, t = torch.randn(4, 3, 8, 8), torch.full((4,), 500)
    with torch.no_grad():
        ref = model(x, t)
        model.compute_dtype = torch.bfloat16
        low = model(x, t)
    assert low.dtype == torch.float32
    assert not torch.equal(low, ref)  # it did compute in bf16 (8-bit mantissa)
    assert (low - ref).norm() / ref.norm() < 0.05


def test_auto_is_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(base, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert base.compute_dtype_for("auto") is None and base.compute_dtype_for("fp32") is None
    monkeypatch.setattr(base, "cpu_has_native_bf16", lambda: True)
    assert base.compute_dtype_for("auto") is torch.bfloat16 and base.compute_dtype_for("bf16") is torch.bfloat16


def test_bf16_run_is_recorded_and_refused_values_are_one_line(tmp_path, capsys, monkeypatch):
    built = []
    real = base.with_execution_options
    monkeypatch.setattr(base, "with_execution_options",
                        lambda make, dtype, channels_last: (built.append(dtype), real(make, dtype, channels_last))[1])
    argv = ["--task", "levy", "--method", "pretrained", "--budget", "16", "--out", str(tmp_path), "--no-progress",
            "--set", "num_steps=3", "--set", "run.n_eval=8"]
    assert main(argv + ["--set", "run.precision=bf16"]) == 0
    cfg = json.loads(next(tmp_path.iterdir()).joinpath("config.json").read_text())
    assert cfg["run"]["precision"] == "bf16" and built == [torch.bfloat16]
    assert main(argv + ["--set", "run.precision=fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: run.precision='fp16' must be one of 'fp32', 'bf16', 'auto'"]


def test_fp32_runs_hash_like_runs_from_before_the_setting():
    from benchmarks.report.run_folders import config_hash

    old = {"agent": {"lr": 1e-3}, "run": {"n_eval": 128}, "task_overrides": {}}
    new = {"agent": {"lr": 1e-3}, "run": {"n_eval": 128, "precision": "fp32", "checkpoint_every_s": 60.0},
           "task_overrides": {}}
    bf16 = {**new, "run": {**new["run"], "precision": "bf16"}}
    assert config_hash(old) == config_hash(new) != config_hash(bf16)


def test_channels_last_unet_is_the_same_function_in_the_standard_layout(tmp_path):
    """run.channels_last: the UNet's weights go NHWC, its output stays in the standard layout and equals the
    standard-layout UNet's up to float rounding; the vector MLP ignores it; a run with it off still works."""
    from sqdf_bbo.backbones.base import with_execution_options
    from sqdf_bbo.backbones.unet import load_pretrained_unet
    from sqdf_bbo.run import main

    plain = load_pretrained_unet()
    fast = with_execution_options(load_pretrained_unet, channels_last=True)()
    conv = fast.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 3, 16, 16, generator=g), torch.tensor([5, 500, 950])
    with torch.no_grad():
        out, ref = fast(x, t), plain(x, t)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert main(["--task", "levy", "--method", "random", "--budget", "8", "--out", str(tmp_path / "v"),
                 "--no-progress", "--set", "run.channels_last=false"]) == 0


def test_memory_and_time_switches_do_not_change_the_config_hash():
    """Gradient checkpointing (any value) and the UNet's memory layout hash like the committed runs, which
    recorded checkpoint=true and no layout; a setting that changes results still changes the hash."""
    from benchmarks.report.run_folders import config_hash

    old = {"agent": {"lr": 1e-3, "checkpoint": True}, "run": {"n_eval": 128}, "task_overrides": {}}
    for ck in ("auto", False, True):
        new = {"agent": {"lr": 1e-3, "checkpoint": ck}, "run": {"n_eval": 128, "channels_last": ck is True},
               "task_overrides": {}}
        assert config_hash(new) == config_hash(old)
    assert config_hash({**old, "agent": {"lr": 2e-3, "checkpoint": True}}) != config_hash(old)
