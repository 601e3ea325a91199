"""Data parallelism over 2 CPU processes (spawned and joined by gloo: tests/cpu_launcher.py): the all-reduced
gradient equals the single-process gradient on the union batch, also for uneven shards and for the SD policy's
LoRA; sharded sampling returns the union in order."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

torch.set_num_threads(1)


def _worker(weights_dir):
    import torch

    from sqdf_bbo.distributed import DataParallel

    torch.set_num_threads(1)
    dp = DataParallel(cpu=True)
    assert dp.world_size == 2 and dp.distributed

    # 1) a small MLP, union batch of 7 (shards 4 + 3), loss = mean over samples
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    if dp.rank == 1:  # different init on purpose: broadcast must fix it
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
    dp.broadcast_parameters(net.parameters())
    X = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    Y = torch.randn(7, 1, generator=torch.Generator().manual_seed(2))
    ref = torch.autograd.grad(((net(X) - Y) ** 2).mean(), list(net.parameters()))
    xs, ys = dp.shard(X), dp.shard(Y)
    assert len(xs) == (4 if dp.rank == 0 else 3)
    net.zero_grad()
    ((net(xs) - ys) ** 2).mean().backward()
    dp.all_reduce_grads(net.parameters(), n_local=len(xs), n_total=len(X))
    for p, g in zip(net.parameters(), ref):
        assert torch.allclose(p.grad, g, atol=1e-6), (dp.rank, (p.grad - g).abs().max())

    # 2) equal shards, plain mean
    net.zero_grad()
    X8 = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    ref = torch.autograd.grad(net(X8).pow(2).mean(), list(net.parameters()))
    net.zero_grad()
    net(dp.shard(X8)).pow(2).mean().backward()
    dp.all_reduce_grads(net.parameters())
    for p, g in zip(net.parameters(), ref):
        assert torch.allclose(p.grad, g, atol=1e-6)

    # 3) sharded sampling: union in rank order, uneven sizes, and object gathering
    out = dp.sample_sharded(lambda m: torch.arange(m) + 100 * dp.rank, 5)
    assert out.tolist() == [0, 1, 2, 100, 101], out
    assert dp.gather_object([f"p{dp.rank}"]) == ["p0", "p1"]
    assert abs(dp.mean(float(dp.rank)) - 0.5) < 1e-12

    # 4) the SD policy LoRA (shared UNet, CFG, prompts): reduced grads == union-batch grad
    if weights_dir is not None:
        from sqdf_bbo.backbones.stable_diffusion import StableDiffusionBackbone

        bb = StableDiffusionBackbone.from_pretrained(os.path.join(weights_dir, "sd"), guidance_scale=2.0)
        pol, ref_view = bb.make_policy_and_reference()
        torch.manual_seed(0)
        pol.add_lora(2)
        params = [p for p in pol.parameters() if p.requires_grad]
        with torch.no_grad():
            for p in params:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
        z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(5))
        t = torch.tensor([981, 501, 21, 1])
        prompts = ["cat", "dog", "owl", "fox"]

        def loss(zz, tt, pp):
            return ((pol(zz, tt, pp) - ref_view(zz, tt, pp)) ** 2).mean()

        ref_g = torch.autograd.grad(loss(z, t, prompts), params)
        for p in params:
            p.grad = None
        loss(dp.shard(z), dp.shard(t), dp.shard(prompts)).backward()
        dp.all_reduce_grads(params)
        for p, g in zip(params, ref_g):
            assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4), (p.grad - g).abs().max()
    dp.barrier()


def test_two_process_gradients_equal_union_batch(tmp_path):
    from cpu_launcher import launch_on_cpu

    from sqdf_bbo.backbones.sd_random import build_sd_components

    comps = build_sd_components("tiny", str(tmp_path / "tok"), seed=0)
    sd = tmp_path / "sd"
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        comps[name].save_pretrained(str(sd / name))
    launch_on_cpu(_worker, args=(str(tmp_path),), num_processes=2)


def test_single_process_is_a_no_op():
    from sqdf_bbo.distributed import DataParallel

    dp = DataParallel(cpu=True)
    assert dp.world_size == 1 and not dp.distributed and dp.shard_sizes(5) == [5]
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    dp.all_reduce_grads([p])
    assert p.grad.tolist() == [2.0, 2.0, 2.0]
    assert dp.sample_sharded(lambda m: torch.arange(m), 3).tolist() == [0, 1, 2]
