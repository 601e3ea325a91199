"""Embedded image tier: data offline-ness, oracle determinism/checksum, UNet backbone, metrics.

Every check compares against an independent computation (numpy/scipy/sklearn/Pillow) where there is one.
Kept small (few images, few DDIM steps) so the file runs in well under 2 minutes on one core.
"""
from __future__ import annotations

import os
import shutil
import socket

import numpy as np
import pytest
import scipy.linalg
import torch

from sqdf_bbo.data import build_patches, load_source_images
from sqdf_bbo.data import patches as patches_mod
from sqdf_bbo.data.checksum import verify_checksum
from sqdf_bbo.oracles import load_proxy_features, load_rand_aesthetic
from sqdf_bbo.oracles.rand_aesthetic import asset_path, gt_statistics, ridge_fit

torch.set_num_threads(1)
S = 16


@pytest.fixture(scope="module")
def patches():
    return build_patches(96, S, "heldout", seed=11)


# ---- data ------------------------------------------------------------------------------------------
def test_patches_build_offline(monkeypatch):
    """No network: HF offline and every socket connect raises; the data set still builds from wheels."""
    def no_net(*a, **k):
        raise OSError("network disabled in test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_net)
    monkeypatch.setattr(socket, "create_connection", no_net)
    load_source_images.cache_clear()
    patches_mod._crop_sites.cache_clear()
    x = build_patches(64, S, "train", seed=3)
    assert x.shape == (64, 3, S, S) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x, build_patches(64, S, "train", seed=3))  # deterministic
    assert not torch.equal(x, build_patches(64, S, "train", seed=4))
    assert len(load_source_images()) == 11


def test_split_sites_disjoint():
    """Every train crop and every held-out crop, mapped back to full resolution, covers only pixels of its
    own split's tiles (checked by brute force on sampled corners), and both splits have crops at every scale."""
    rng = np.random.default_rng(0)
    imgs = list(load_source_images().values())
    for split, want in (("train", False), ("heldout", True)):
        sites = patches_mod._crop_sites(split, S)
        k = 0
        for i, img in enumerate(imgs):
            held = patches_mod.heldout_mask(i, img.shape[:2])
            for f in patches_mod.SCALES:
                d, corners = sites[k]
                k += 1
                np.testing.assert_array_equal(d, patches_mod._box_down(img, f))
                for y, x in corners[rng.integers(len(corners), size=min(20, len(corners)))]:
                    assert (held[y * f:(y + S) * f, x * f:(x + S) * f] == want).all()
        assert all(len(c) > 0 for _, c in sites[::3]), split  # full scale: every image has crops
        assert sum(len(c) > 0 for _, c in sites[2::3]) >= 8, split  # quarter scale: most images do
    frac = np.mean([patches_mod.heldout_mask(i, im.shape[:2]).mean() for i, im in enumerate(imgs)])
    assert 0.12 < frac < 0.28  # about HELDOUT_FRAC of the pixels are held out
    # box downsampling = mean of f x f blocks (independent check on one block)
    img = imgs[0]
    np.testing.assert_allclose(patches_mod._box_down(img, 2)[3, 5], img[6:8, 10:12].mean((0, 1)), rtol=1e-6)


def test_patches_bad_args():
    with pytest.raises(ValueError, match="split must be"):
        build_patches(4, S, "test")
    with pytest.raises(ValueError, match="n >= 1"):
        build_patches(0, S)


# ---- oracle ------------------------------------------------------------------------------------------
def test_oracle_checksum_and_tamper(tmp_path):
    verify_checksum(asset_path(S))
    bad = tmp_path / asset_path(S).name
    shutil.copy(asset_path(S), bad)
    shutil.copy(str(asset_path(S)) + ".sha256", str(bad) + ".sha256")
    verify_checksum(bad)
    data = bytearray(bad.read_bytes())
    data[-5] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        verify_checksum(bad)


def test_oracle_deterministic_and_differentiable(patches):
    o1 = load_rand_aesthetic(S)
    load_rand_aesthetic.cache_clear()
    o2 = load_rand_aesthetic(S)
    assert o1 is not o2
    torch.testing.assert_close(o1(patches), o2(patches), rtol=0, atol=0)
    torch.testing.assert_close(o1.ground_truth(patches), o2.ground_truth(patches), rtol=0, atol=0)
    x = patches[:8].clone().requires_grad_(True)
    o1(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # oracle fits A on natural patches: strong correlation on held-out patches
    assert np.corrcoef(o1(patches).numpy(), o1.ground_truth(patches).numpy())[0, 1] > 0.8


def test_gt_statistics_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.random((5, 3, 12, 12))
    got = gt_statistics(torch.tensor(x)).numpy()
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    col = np.sqrt(rg.reshape(5, -1).var(1) + yb.reshape(5, -1).var(1)) + 0.3 * np.sqrt(
        rg.reshape(5, -1).mean(1) ** 2 + yb.reshape(5, -1).mean(1) ** 2)
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    lap = np.abs(lum[:, :-2, 1:-1] + lum[:, 2:, 1:-1] + lum[:, 1:-1, :-2] + lum[:, 1:-1, 2:] - 4 * lum[:, 1:-1, 1:-1])
    sym = 1 - np.abs(x - x[..., ::-1]).reshape(5, -1).mean(1)
    c = x[:, :, 3:9, 3:9].mean((2, 3))
    m = np.ones((12, 12), bool)
    m[3:9, 3:9] = False
    fr = x[:, :, m].mean(-1)
    want = np.stack([col, lum.reshape(5, -1).std(1), lap.reshape(5, -1).mean(1), sym,
                     np.linalg.norm(c - fr, axis=1), -np.abs(lum.reshape(5, -1).mean(1) - 0.5)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ridge_against_sklearn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 7))
    y = z @ rng.normal(size=7) + 3 + 0.1 * rng.normal(size=200)
    z -= z.mean(0)  # the oracle's features are z-scored (centred) before the fit
    w, b = ridge_fit(torch.tensor(z), torch.tensor(y), 10.0)
    sk = Ridge(alpha=10.0).fit(z, y)
    np.testing.assert_allclose(w.numpy(), sk.coef_, rtol=1e-8)
    np.testing.assert_allclose(float(b), sk.intercept_, rtol=1e-8)


def test_proxy_features_differ_from_oracle(patches):
    pf = load_proxy_features(S)
    f = pf(patches)
    assert f.shape == (len(patches), 256)
    assert pf.encoder.widths != load_rand_aesthetic(S).phi.encoder.widths
    verify_checksum(str(asset_path(S)).replace("rand_aesthetic", "proxy_features"))
    x = patches[:4].clone().requires_grad_(True)
    pf(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---- backbone ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unet():
    from sqdf_bbo.backbones.unet import load_pretrained_unet

    return load_pretrained_unet()


def test_unet_samples_shape_and_range(unet):
    from sqdf_bbo.pretrain.image import sample_images

    assert unet.latent_shape == (3, S, S)
    assert not any(p.requires_grad for p in unet.parameters())
    x = sample_images(unet, 3, num_steps=3, seed=0)
    assert x.shape == (3, 3, S, S) and float(x.min()) >= 0 and float(x.max()) <= 1
    torch.testing.assert_close(x, sample_images(unet, 3, num_steps=3, seed=0))
    z = torch.rand(2, 3, S, S) * 2 - 1
    torch.testing.assert_close(unet.encode(unet.decode(z)), z, atol=1e-6, rtol=0)


def test_unet_lora_injects(unet):
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    m = copy.deepcopy(unet)
    x, t = torch.randn(2, 3, S, S), torch.tensor([10, 700])
    before = m(x, t)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=m.lora_targets()), m)
    n_lora = sum(p.numel() for n, p in m.named_parameters() if "lora_" in n)
    assert n_lora > 0
    torch.testing.assert_close(m(x, t), before)  # LoRA B is zero-initialised


def test_unet_checksum_tamper(tmp_path):
    from sqdf_bbo.backbones.unet import WEIGHTS_DIR, load_pretrained_unet

    for f in ("unet16.json", "unet16.safetensors", "unet16.safetensors.sha256"):
        shutil.copy(WEIGHTS_DIR / f, tmp_path / f)
    load_pretrained_unet("unet16", tmp_path)
    (tmp_path / "unet16.safetensors.sha256").write_text("0" * 64 + "  unet16.safetensors\n")
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        load_pretrained_unet("unet16", tmp_path)
    with pytest.raises(FileNotFoundError, match="available"):
        load_pretrained_unet("nope", tmp_path)


def test_pretrain_tiny_run_logs(tmp_path):
    import json

    from sqdf_bbo.backbones.unet import load_pretrained_unet
    from sqdf_bbo.pretrain.image import pretrain_image_main

    meta = pretrain_image_main(["--steps", "2", "--n-train", "128", "--batch", "8", "--out", str(tmp_path),
                                "--fd-samples", "0", "--name", "tiny", "--ckpt-dir", str(tmp_path / "ck"), "--threads", "1"])
    js = json.loads((tmp_path / "tiny.json").read_text())
    assert js["steps"] == 2 and js["command"].startswith("python -m sqdf_bbo.pretrain image")
    assert js["wall_s"] > 0 and np.isfinite(js["final_loss"]) and js["complete"]
    assert meta["seed"] == 0
    load_pretrained_unet("tiny", tmp_path)


def test_pretrain_resume_is_exact(tmp_path):
    """A 2-step run continued for 2 more (a new process's worth of state: safetensors + JSON) gives the
    same weights, EMA and loss as one 4-step run."""
    import json

    from safetensors.torch import load_file

    from sqdf_bbo.pretrain.image import pretrain_image_main

    common = ["--steps", "4", "--n-train", "128", "--batch", "8", "--warmup", "1", "--fd-samples", "0",
              "--name", "tiny", "--threads", "1"]
    pretrain_image_main(common + ["--out", str(tmp_path / "a"), "--ckpt-dir", str(tmp_path / "cka")])
    part = pretrain_image_main(common + ["--out", str(tmp_path / "b"), "--ckpt-dir", str(tmp_path / "ckb"),
                                         "--stop-after", "2"])
    assert part["complete"] is False and part["step"] == 2 and not (tmp_path / "b" / "tiny.safetensors").exists()
    with pytest.raises(SystemExit, match="--resume"):  # never silently restarts over a run
        pretrain_image_main(common + ["--out", str(tmp_path / "b"), "--ckpt-dir", str(tmp_path / "ckb")])
    with pytest.raises(SystemExit, match="lr was 0.002, now 0.001"):
        pretrain_image_main(common + ["--out", str(tmp_path / "b"), "--ckpt-dir", str(tmp_path / "ckb"),
                                      "--resume", "--lr", "1e-3"])
    pretrain_image_main(common + ["--out", str(tmp_path / "b"), "--ckpt-dir", str(tmp_path / "ckb"), "--resume"])
    a, b = load_file(str(tmp_path / "a" / "tiny.safetensors")), load_file(str(tmp_path / "b" / "tiny.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    sa, sb = (load_file(str(tmp_path / d / "state.safetensors")) for d in ("cka", "ckb"))
    for k in sa:  # raw weights, AdamW moments and the data/noise generator agree too
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    ja, jb = (json.loads((tmp_path / d / "tiny.json").read_text()) for d in ("a", "b"))
    assert ja["steps"] == jb["steps"] == 4 and ja["final_loss"] == jb["final_loss"]
    assert len(jb["invocations"]) == 2 and jb["invocations"][1]["start_step"] == 2


# ---- tasks and metrics -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task():
    from sqdf_bbo.tasks import make_task

    return make_task("aesthetic", fd_reference=400)


def test_task_info_and_overrides(task):
    from sqdf_bbo.tasks import list_tasks, make_task

    assert {"aesthetic", "compressibility", "incompressibility"} <= set(list_tasks())
    info = task.info
    assert info.tier == "image" and info.design_shape == (3, S, S) and info.feature_dim == 256
    assert info.num_steps >= 1 and info.agent_defaults
    with pytest.raises(ValueError, match="allowed:.*num_steps"):
        make_task("aesthetic", bogus=1)
    with pytest.raises(ValueError, match="noise_std"):
        make_task("compressibility", noise_std=-1.0)
    with pytest.raises(ValueError, match="available"):
        make_task("aesthetic", unet="missing")


def test_aesthetic_values_and_extra(task, patches):
    v = task.evaluate_true(patches)
    assert v.dtype == torch.float64 and v.shape == (len(patches),)
    a = task.extra_values(patches)["ground_truth_A"]
    torch.testing.assert_close(a, load_rand_aesthetic(S).ground_truth(patches).double())


def test_frechet_distance_against_scipy(task, patches):
    from sqdf_bbo.tasks.image import _reference_stats

    f = task.phi(patches).numpy()
    mu, cov = _reference_stats(S, 400)
    mu_s, cov_s = f.mean(0), np.cov(f, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_s @ cov).real
    want = np.sum((mu_s - mu) ** 2) + np.trace(cov_s + cov - 2 * covmean)
    np.testing.assert_allclose(task.frechet_distance(patches), want, rtol=1e-4)


def test_frechet_closed_form_gaussians():
    """FD of two diagonal Gaussians = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2."""
    from sqdf_bbo.metrics import gaussian_frechet

    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    np.testing.assert_allclose(gaussian_frechet(mu1, np.diag(s1), mu2, np.diag(s2)), want, rtol=1e-10)


def test_naturalness_and_diversity_sane(task, patches):
    from sqdf_bbo.metrics import diversity

    noise = torch.rand_like(patches)
    flat = patches.mean((2, 3), keepdim=True).expand_as(patches).contiguous()
    nat, nat_noise, nat_flat = task.naturalness(patches), task.naturalness(noise), task.naturalness(flat)
    assert nat["fd_phi"] < nat_flat["fd_phi"] < nat_noise["fd_phi"]
    assert nat["denoise_loss"] < nat_noise["denoise_loss"]
    same = diversity(task, patches[:1].expand(10, -1, -1, -1))
    assert same["vendi"] == pytest.approx(1.0, abs=1e-6) and same["mean_pairwise_distance"] < 1e-6
    assert diversity(task, patches)["vendi"] > 2


def test_jpeg_tasks_against_pillow(patches, tmp_path):
    from PIL import Image

    from sqdf_bbo.tasks import make_task

    comp, inc = make_task("compressibility"), make_task("incompressibility")
    v = inc.evaluate_true(patches[:4])
    torch.testing.assert_close(comp.evaluate_true(patches[:4]), -v)
    for i in range(4):  # independent: write a file, read its size from the file system
        arr = (patches[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(arr).save(p, quality=95)
        assert v[i].item() == pytest.approx(os.path.getsize(p) / 1000.0)
    flat = torch.full((2, 3, S, S), 0.5)
    assert inc.evaluate_true(torch.rand(2, 3, S, S)).min() > inc.evaluate_true(flat).max()


def test_render_writes_png(task, patches, tmp_path):
    from PIL import Image

    p = tmp_path / "grid.png"
    task.render(patches[:10], str(p), title="t", reference=patches[10:20])
    im = Image.open(p)
    assert im.format == "PNG" and im.size[0] > 100
    with pytest.raises(ValueError, match="expects designs of shape"):
        task.render(torch.rand(2, 3, 8, 8), str(p))


def test_consistency_model_committed(task, unet):
    """The committed CM loads (sha256 + teacher check), is found for the task's grid, rejected for others,
    and one call gives a clean-latent estimate of the right shape."""
    from sqdf_bbo.consistency import find_consistency_model
    from sqdf_bbo.diffusion import DDIMSchedule

    n = task.info.num_steps
    cm, reason = find_consistency_model(task.info, unet, n)
    assert cm is not None, reason
    assert cm.num_steps == n and not any(p.requires_grad for p in cm.parameters())
    none, why = find_consistency_model(task.info, unet, n + 5)
    assert none is None and "distilled for" in why
    sch = DDIMSchedule.from_scheduler(unet.scheduler, n, 1.0)
    x = torch.randn(2, 3, S, S)
    out = cm(x, sch.timestep_batch(n // 2, 2))
    assert out.shape == x.shape and torch.isfinite(out).all()
