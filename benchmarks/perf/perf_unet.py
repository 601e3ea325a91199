"""The embedded 16x16 UNet's forward (and forward + backward) under each CPU execution option, one at a time.

    python -m benchmarks.perf.perf_unet [--threads 2] [--batch 64] [--repeats 10] [--out results/perf_unet.csv]

Variants: ``fp32`` (the default), ``channels_last`` (model and input in NHWC), ``bf16`` (``torch.autocast``
on the CPU, what ``run.precision=bf16`` does), ``compile`` (``torch.compile`` of the fp32 model, inductor;
its compile time is reported apart), and ``compile+channels_last``. For each: milliseconds per call at
``--batch`` images (the image tier's ``sample_batch``), no-grad forward (sampling, evaluation) and forward +
backward of the sum of the output with respect to the parameters (fine-tuning), after warm-up calls; the
FLOPs of one call counted with ``torch.utils.flop_counter``, the achieved GFLOP/s and its share of this
CPU's fp32 matmul rate measured in the same run, the largest deviation of the variant's output from fp32,
and the load average. Give it the machine alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

COLUMNS = ["variant", "pass", "batch", "ms_per_call", "gflop_per_call", "gflops_per_s", "peak_ratio",
           "max_abs_diff_vs_fp32", "compile_s", "threads", "matmul_peak_gflops", "native_bf16", "load_before",
           "machine", "git_commit"]
VARIANTS = ("fp32", "channels_last", "bf16", "compile", "compile+channels_last")


def build(variant: str):
    """(module, callable, input transform) for one variant of the pretrained UNet (compiled lazily)."""
    from sqdf_bbo.backbones.unet import load_pretrained_unet

    model = load_pretrained_unet(frozen=False)
    model.requires_grad_(True)
    to_input = lambda x: x  # noqa: E731
    if "channels_last" in variant:
        model = model.to(memory_format=torch.channels_last)
        to_input = lambda x: x.contiguous(memory_format=torch.channels_last)  # noqa: E731
    if variant == "bf16":
        def fn(x, t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x, t).float()
    elif variant.startswith("compile"):
        fn = torch.compile(model)
    else:
        fn = model
    return model, fn, to_input


def main(argv: list[str] | None = None) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.common.provenance import load_average, provenance
    from benchmarks.perf.perf_core import median_seconds
    from benchmarks.perf.perf_methods import matmul_peak_gflops
    from benchmarks.perf.results_csv import write_csv
    from sqdf_bbo.backbones.base import cpu_has_native_bf16

    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.perf_unet", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="results/perf_unet.csv")
    a = p.parse_args(argv)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or a.threads < 1 or a.batch < 1 or a.repeats < 1:
        p.error(f"--variants must be among {', '.join(VARIANTS)} (got {', '.join(bad)}); "
                "--threads, --batch, --repeats >= 1")
    torch.set_num_threads(a.threads)
    load = load_average()  # before this process's own GEMM
    peak = matmul_peak_gflops()
    context = {"threads": a.threads, "matmul_peak_gflops": round(peak, 1), "native_bf16": cpu_has_native_bf16(),
               "load_before": load, **provenance()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, 16, 16, generator=g)
    t = torch.randint(0, 1000, (a.batch,), generator=g)
    ref_model, _, _ = build("fp32")
    with torch.no_grad():
        ref_out = ref_model(x, t)
        with FlopCounterMode(display=False) as fc:
            ref_model(x, t)
    fwd_flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        ref_model(x, t).sum().backward()
    train_flops = fc.get_total_flops()
    rows = []
    for variant in variants:
        model, fn, to_input = build(variant)
        xv = to_input(x)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn(xv, t)  # the first call compiles
        compile_s = time.perf_counter() - t0 if variant.startswith("compile") else 0.0
        diff = float((out.float() - ref_out).abs().max())

        def forward():
            with torch.no_grad():
                fn(xv, t)

        def train():
            model.zero_grad(set_to_none=True)
            fn(xv, t).sum().backward()

        for name, call, flops in (("forward", forward, fwd_flops), ("forward+backward", train, train_flops)):
            sec = median_seconds(call, a.repeats)
            rate = flops / sec / 1e9
            rows.append({"variant": variant, "pass": name, "batch": a.batch, "ms_per_call": round(1e3 * sec, 2),
                         "gflop_per_call": round(flops / 1e9, 3), "gflops_per_s": round(rate, 1),
                         "peak_ratio": round(rate / peak, 3), "max_abs_diff_vs_fp32": f"{diff:.2e}",
                         "compile_s": round(compile_s, 1), **context})
            print(f"{variant:22s} {name:17s} {1e3 * sec:8.2f} ms  {rate:6.1f} GFLOP/s  ({100 * rate / peak:.0f} % of "
                  f"{peak:.0f})  max |diff| {diff:.1e}" + (f"  compile {compile_s:.0f} s" if compile_s else ""),
                  file=sys.stderr, flush=True)
    write_csv(Path(a.out), rows, COLUMNS)
    print(f"wrote {len(rows)} rows to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
