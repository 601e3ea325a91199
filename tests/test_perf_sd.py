"""benchmarks/perf/perf_sd.py runs end to end on tiny configs (CPU), and its full-size configs are SD1.5 / CLIP ViT-L/14
(parameter counts of the published models, built on the meta device: no memory, no download)."""
from __future__ import annotations

import csv
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

torch.set_num_threads(1)


def test_full_size_configs_match_published_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    from sqdf_bbo.backbones.sd_random import clip_config, text_config, unet_config, vae_config

    def n(m):
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        assert n(UNet2DConditionModel(**unet_config("full"))) == 859_520_964  # SD1.5 UNet
        assert n(AutoencoderKL(**vae_config("full"))) == 83_653_863  # SD1.5 VAE
        assert n(CLIPTextModel(CLIPTextConfig(**text_config("full", 49408)))) == 123_060_480  # CLIP ViT-L/14 text
        clip = CLIPModel(CLIPConfig(**clip_config("full", 49408)))
        assert n(clip.vision_model) + n(clip.visual_projection) == 303_179_776 + 786_432  # ViT-L/14 vision + proj


def test_perf_sd_tiny_cpu(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.perf.perf_sd import main

    out = tmp_path / "perf.csv"
    rows = main(["--tiny", "--device", "cpu", "--steps", "2", "--queries", "2", "--sample-batch", "2",
                 "--updates", "1", "--timed-steps", "1", "--proxy-epochs", "1", "--bf16", "--checkpointing",
                 "--out", str(out)])
    assert [r["method"] for r in rows] == ["sqdf", "alignprop"]
    with open(out) as f:
        got = list(csv.DictReader(f))
    assert len(got) == 2
    for r in got:
        assert float(r["images_per_s"]) > 0 and float(r["steps_per_s"]) > 0
        assert float(r["unet_gflop_per_image_step_cfg"]) > 0 and r["weights"] == "bf16"
