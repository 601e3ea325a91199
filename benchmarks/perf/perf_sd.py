"""Performance of the full-scale tier: one SQDF round and one AlignProp round on Stable Diffusion 1.5.

The networks are **randomly initialised full-size SD1.5 components built from code configs**
(``sqdf_bbo.backbones.sd_random``: UNet 860M, VAE, CLIP text encoder, CLIP ViT-L/14 + LAION head):
same architecture, so the same FLOPs and memory as the real weights; nothing is downloaded. The
fused LCM-LoRA CM is stood in for by a frozen copy of the UNet (same cost).

Per method it measures: sampling throughput (images/s of 50-step DDIM with CFG, decode included),
fine-tuning steps/s (single optimizer steps of ``improve()`` after the round, ``benchmarks.common.steps.one_more_step``), peak memory, and achieved TFLOP/s (FLOPs counted
by ``torch.utils.flop_counter`` on one UNet call and on one update step) against the GPU's dense bf16
peak. Writes ``results/perf_sd.csv`` (one row per method; ``--tiny`` writes ``results/perf_sd_tiny.csv``).

    python benchmarks/perf/perf_sd.py --bf16 --checkpointing            # on a GPU
    python benchmarks/perf/perf_sd.py --tiny --device cpu               # smoke test, seconds

Optimisation flags: ``--bf16`` (frozen weights in bf16 + bf16 autocast; LoRA stays fp32), ``--no-sdpa``
(classic attention instead of PyTorch SDPA), ``--channels-last``, ``--compile`` (``torch.compile`` of the
UNet), ``--checkpointing`` (UNet gradient checkpointing). Numbers are only meaningful on the device they
were measured on; this script never invents GPU numbers.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common.steps import one_more_step  # noqa: E402

# dense bf16 peak TFLOP/s (no sparsity) by device-name substring
BF16_PEAK = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
             "A10G": 70.0, "4090": 165.0}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, v in BF16_PEAK.items():
        if key in name:
            return v
    return None


def peak_mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB -> GiB (process RSS)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


class PerfTask:
    """A minimal harness-side task over random SD components (same interface as ``aesthetic-sd``)."""

    def __init__(self, args, device):
        from sqdf_bbo.backbones.sd_random import SD15_SCHEDULER, build_clip, build_head, build_sd_components
        from sqdf_bbo.oracles.clip_aesthetic import CLIPAestheticOracle, CLIPEmbedder
        from sqdf_bbo.tasks.base import TaskInfo
        from sqdf_bbo.tasks.stable_diffusion import TRAIN_ANIMALS, sample_prompts

        size = "tiny" if args.tiny else "full"
        self.args, self.device, self.size = args, device, size
        self.wdt = torch.bfloat16 if args.bf16 else torch.float32
        self._tok_dir = tempfile.mkdtemp(prefix="perf_sd_tok_")
        self._sched = SD15_SCHEDULER
        clip = build_clip(size, seed=1)
        emb = CLIPEmbedder(clip.vision_model, clip.visual_projection, clip.config.vision_config.image_size)
        self.oracle = CLIPAestheticOracle(emb, build_head(clip.config.projection_dim, seed=2))
        self.oracle.embedder.to(device=device, dtype=self.wdt)
        self.oracle.to(device)
        del clip
        self.noise_std = 0.1
        self._last = None
        lat = 8 if args.tiny else 64
        design = (3, 16, 16) if args.tiny else (3, 512, 512)
        self.info = TaskInfo(
            name="aesthetic-sd-random", tier="sd", design_shape=design, make_backbone=self.make_backbone,
            features=lambda x: self.oracle.embedder(x.to(device)), feature_dim=self.oracle.embedder.embed_dim,
            sample_conditions=lambda n, g: sample_prompts(TRAIN_ANIMALS, n, g, 0.2), latent_shape=(4, lat, lat),
            num_steps=args.steps, make_consistency_model=self.make_cm, agent_defaults={"num_steps": args.steps})
        self.latent_hw = lat
        self._build = build_sd_components

    def make_backbone(self):
        from diffusers import DDIMScheduler
        from diffusers.models.attention_processor import AttnProcessor

        from sqdf_bbo.backbones.stable_diffusion import StableDiffusionBackbone

        c = self._build(self.size, self._tok_dir, seed=0)
        unet = c["unet"].to(self.device, self.wdt)
        if not self.args.sdpa:
            unet.set_attn_processor(AttnProcessor())
        if self.args.channels_last:
            unet.to(memory_format=torch.channels_last)
        cm_unet = copy.deepcopy(unet)  # stands in for the UNet with the LCM-LoRA fused in (same FLOPs)
        bb = StableDiffusionBackbone(
            unet, c["vae"].to(self.device, self.wdt), c["text_encoder"].to(self.device, self.wdt), c["tokenizer"],
            DDIMScheduler(**self._sched), guidance_scale=7.5, cm_unet=cm_unet, cm_mode="fused",
            autocast="bf16" if self.args.bf16 else None, gradient_checkpointing=self.args.checkpointing,
            decode_batch=self.args.decode_batch)
        if self.args.compile:
            bb.unet.compile()
            bb.cm_unet.compile()
        self._last = bb
        return bb

    def make_cm(self):
        from sqdf_bbo.backbones.stable_diffusion import SDConsistencyModel

        return SDConsistencyModel(self._last)

    def evaluate_true(self, designs):
        with torch.no_grad():
            return torch.cat([self.oracle(c.to(self.device)).double().cpu() for c in designs.split(8)])


def run_method(method: str, task: PerfTask, args, device) -> dict:
    from benchmarks.common.provenance import provenance
    from sqdf_bbo.agents import make_agent, resolve_method

    cls = resolve_method(method)
    tb = args.sqdf_train_batch if method == "sqdf" else args.train_batch
    cfg = {"lora_rank": 4, "updates_per_round": args.updates, "train_batch": tb, "sample_batch": args.sample_batch,
           "on_policy_batch": args.on_policy_batch, "buffer_size": max(64, tb), "proxy_epochs": args.proxy_epochs,
           "checkpoint": True}
    cfg = {k: v for k, v in cfg.items() if k in cls.default_config}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    agent = make_agent(method, task.info, cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    n = args.queries
    agent.propose(min(n, args.sample_batch), g)  # warm-up (compile, cudnn autotune, prompt cache)
    sync(device)
    t0 = time.perf_counter()
    designs = agent.propose(n, g)
    sync(device)
    t_sample = time.perf_counter() - t0
    values = task.evaluate_true(designs) + task.noise_std * torch.randn(n, generator=g, dtype=torch.float64)
    agent.observe(designs.cpu(), values)
    t0 = time.perf_counter()
    stats = agent.improve()
    sync(device)
    t_round = time.perf_counter() - t0
    times = []
    for _ in range(args.timed_steps):
        sync(device)
        t0 = time.perf_counter()
        one_more_step(agent)
        sync(device)
        times.append(time.perf_counter() - t0)
    t_step = sum(times) / len(times)
    # FLOPs: one CFG UNet call at the sampling batch (2B UNet evaluations), and one whole update step
    bb = agent.policy
    shape = (args.sample_batch, 4, task.latent_hw, task.latent_hw)
    z = torch.randn(shape, device=device)
    prompts = task.info.sample_conditions(args.sample_batch, g)
    with torch.no_grad():
        f_unet = count_flops(lambda: bb(z, torch.full((args.sample_batch,), 501, device=device), prompts))
    f_step = count_flops(lambda: one_more_step(agent))
    images_per_s = n / t_sample
    unet_tflops_sampling = f_unet / args.sample_batch * args.steps * images_per_s / 1e12
    train_tflops = f_step / t_step / 1e12
    peak = peak_tflops(device, args.peak_tflops)
    return {
        "method": method, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": task.size, "weights": "bf16" if args.bf16 else "fp32", "sdpa": args.sdpa,
        "channels_last": args.channels_last, "compile": args.compile, "checkpointing": args.checkpointing,
        "num_steps": args.steps, "sample_batch": args.sample_batch, "queries": n, "train_batch": tb,
        "updates_per_round": args.updates, "images_per_s": round(images_per_s, 4),
        "round_s": round(t_round, 2), "steps_per_s": round(1.0 / t_step, 4), "peak_mem_gb": round(peak_mem_gb(device), 2),
        "unet_gflop_per_image_step_cfg": round(f_unet / args.sample_batch / 1e9, 2),
        "sampling_unet_tflops": round(unet_tflops_sampling, 3), "train_step_tflops": round(train_tflops, 3),
        "bf16_peak_tflops": peak, "sampling_mfu": round(unet_tflops_sampling / peak, 4) if peak else None,
        "train_mfu": round(train_tflops / peak, 4) if peak else None,
        "train_loss": stats.get("loss"),
        **provenance(command="python benchmarks/perf/perf_sd.py " + " ".join(sys.argv[1:])),
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random configs (CPU smoke test)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--methods", default="sqdf,alignprop")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--queries", type=int, default=16, help="images sampled for the throughput measurement")
    p.add_argument("--sample-batch", type=int, default=8)
    p.add_argument("--train-batch", type=int, default=2, help="AlignProp trajectories per update")
    p.add_argument("--sqdf-train-batch", type=int, default=4, help="SQDF (z_k, k) pairs per update")
    p.add_argument("--on-policy-batch", type=int, default=2, help="SQDF fresh trajectories per update")
    p.add_argument("--updates", type=int, default=2, help="updates in the measured round")
    p.add_argument("--timed-steps", type=int, default=2)
    p.add_argument("--proxy-epochs", type=int, default=20)
    p.add_argument("--decode-batch", type=int, default=4)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--no-sdpa", dest="sdpa", action="store_false")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out or ROOT / "results" / ("perf_sd_tiny.csv" if args.tiny else "perf_sd.csv"))
    task = PerfTask(args, device)
    rows = []
    for m in [s for s in args.methods.split(",") if s]:
        row = run_method(m, task, args, device)
        print(row, flush=True)
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
