"""Consistency distillation for any :class:`~sqdf_bbo.backbones.base.Backbone` (SQDF's x̂₀ look-ahead).

The consistency model (CM) is a copy of the teacher's network read through LCM-style boundary
coefficients (σ_data = 0.5, timestep scaling 10, u = 10·t):

    f(x_t, t) = c_skip(t) x_t + c_out(t) x̂(x_t, t),   x̂ = (x_t - √(1-ᾱ_t) ε_net(x_t, t)) / √ᾱ_t
    c_skip = σ_d² / (u² + σ_d²),   c_out = u / √(u² + σ_d²)

so one call maps a noisy latent to a clean-latent estimate. Distillation (consistency distillation,
Song et al. 2023, on the N-step DDIM grid of the agent, default N = 50): draw clean x0 from
``sample_x0``, a grid index n, x_n = √a_n x0 + √(1-a_n) ε; one deterministic DDIM (η = 0) step of the
frozen teacher gives x_{n+1}; the target is the EMA student f⁻(x_{n+1}, τ_{n+1}), or x_{n+1} itself after
the last step (the boundary: the teacher's final DDIM output is the clean sample). Loss: mean squared
error between f(x_n, τ_n) and the (detached) target; student initialised from the teacher; AdamW; the EMA
target follows the student with decay ``ema`` (0.95 as LCM). Because the CM is distilled on the agent's
own grid, τ_{k+1} is always a CM timestep (no LCM timestep-mapping quirk of the official code).

CLI (sqdf_bbo/pretrain/distill.py): ``python -m sqdf_bbo.pretrain consistency --backbone mlp --prior ackley [--steps 3000 --seed 0]``
writes ``sqdf_bbo/backbones/weights/cm_mlp_<prior>.safetensors`` + JSON (command, seed, loss, held-out
errors, sha256 of the CM and of the teacher weights). :func:`find_consistency_model` returns the CM for
a task, or None (the SQDF agent then falls back to Tweedie, the paper's "w/o CM" ablation).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from sqdf_bbo.diffusion import DDIMSchedule

Tensor = torch.Tensor
WEIGHTS_DIR = Path(__file__).parent / "backbones" / "weights"


class ConsistencyModel(nn.Module):
    """One-call clean-latent predictor f(x_t (B, *shape), t (B,) long, cond) -> (B, *shape)."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
        super().__init__()
        self.net = net
        self.sigma_data, self.timestep_scaling = float(sigma_data), float(timestep_scaling)
        self.register_buffer("alphas_cumprod", net.scheduler.alphas_cumprod.detach().double().clone())

    @property
    def latent_shape(self):
        return self.net.latent_shape

    def boundary_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(c_skip, c_out) for timesteps t (B,), float64."""
        u = self.timestep_scaling * t.double()
        s2 = self.sigma_data**2
        return s2 / (u**2 + s2), u / torch.sqrt(u**2 + s2)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        t = torch.as_tensor(t, device=x.device).long()
        if t.ndim == 0:
            t = t.repeat(x.shape[0])
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        a = self.alphas_cumprod.to(x.device)[t].to(x.dtype).reshape(shape)
        x0 = (x - torch.sqrt(1 - a) * self.net(x, t, cond)) / torch.sqrt(a)
        c_skip, c_out = self.boundary_coefficients(t.cpu())
        return c_skip.to(x.dtype).to(x.device).reshape(shape) * x + c_out.to(x.dtype).to(x.device).reshape(shape) * x0


def _split(sample):
    return sample if isinstance(sample, tuple) else (sample, None)


def ddim_solve(teacher: nn.Module, schedule: DDIMSchedule, x: Tensor, start: Tensor, cond: Any = None) -> Tensor:
    """Deterministic DDIM (η=0 schedule) from grid index start[i] to the end of the grid, (B, *shape), no grad.

    Rows run together; a row that already finished is left unchanged."""
    N = schedule.num_steps
    x = x.clone()
    with torch.no_grad():
        for k in range(int(start.min()), N):
            active = start <= k
            if not bool(active.any()):
                continue
            xa = x[active]
            ca = None if cond is None else [c for c, m in zip(cond, active.tolist()) if m]
            eps = teacher(xa, schedule.timestep_batch(k, xa.shape[0], x.device), ca)
            x[active] = schedule.mean(xa, eps, k)
    return x


def evaluate_consistency(cm: nn.Module, teacher: nn.Module, num_steps: int, sample_x0: Callable, n: int = 512,
                         seed: int = 1234) -> dict[str, float]:
    """Held-out comparison on x_n = √a x0 + √(1-a) ε at random grid indices: mean squared error (per
    element) of the CM and of one-step Tweedie against multi-step DDIM (η=0) from the same x_n."""
    g = torch.Generator().manual_seed(seed)
    sch = DDIMSchedule.from_scheduler(teacher.scheduler, num_steps, eta=0.0)
    x0, cond = _split(sample_x0(n, g))
    x0 = x0.float()
    idx = torch.randint(0, num_steps, (n,), generator=g)
    a = sch.alpha[idx].float().reshape((n,) + (1,) * (x0.ndim - 1))
    xn = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
    t = sch.timesteps[idx]
    with torch.no_grad():
        ref = ddim_solve(teacher, sch, xn, idx, cond)
        f = cm(xn, t, cond)
        tw = sch.predict_x0(xn, teacher(xn, t, cond), idx)
    dims = tuple(range(1, x0.ndim))
    return {"cm_mse": float(((f - ref) ** 2).mean()), "tweedie_mse": float(((tw - ref) ** 2).mean()),
            "cm_mse_per_sample": ((f - ref) ** 2).mean(dims), "tweedie_mse_per_sample": ((tw - ref) ** 2).mean(dims)}


def distill_consistency(teacher: nn.Module, sample_x0: Callable[[int, torch.Generator], Any], num_steps: int = 50,
                        steps: int = 3000, batch: int = 256, lr: float = 1e-4, ema: float = 0.95, seed: int = 0,
                        log_every: int = 500) -> tuple[ConsistencyModel, dict]:
    """Distil a CM from a frozen eps-prediction ``teacher`` (a Backbone). ``sample_x0(n, generator)``
    returns clean latents (n, *latent_shape) or (latents, conditions). Returns (frozen CM, record)."""
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {ema}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    teacher = teacher.eval().requires_grad_(False)
    sch = DDIMSchedule.from_scheduler(teacher.scheduler, num_steps, eta=0.0)
    student = ConsistencyModel(copy.deepcopy(teacher)).train().requires_grad_(True)
    target = copy.deepcopy(student).eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    t0, tail = time.time(), []
    for step in range(steps):
        x0, cond = _split(sample_x0(batch, g))
        x0 = x0.float()
        n = torch.randint(0, num_steps, (batch,), generator=g)
        shape = (batch,) + (1,) * (x0.ndim - 1)
        a = sch.alpha[n].float().reshape(shape)
        xn = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
        tn = sch.timesteps[n]
        with torch.no_grad():
            x_next = sch.mean(xn, teacher(xn, tn, cond), n)  # η = 0: the deterministic DDIM step
            last = n == num_steps - 1
            tgt = x_next.clone()
            if bool((~last).any()):
                tgt[~last] = target(x_next[~last], sch.timesteps[(n + 1).clamp(max=num_steps - 1)][~last],
                                    None if cond is None else [c for c, m in zip(cond, (~last).tolist()) if m])
        loss = ((student(xn, tn, cond) - tgt) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pt, ps in zip(target.parameters(), student.parameters()):
                pt.mul_(ema).add_(ps.detach(), alpha=1 - ema)
        if step >= int(0.9 * steps):
            tail.append(float(loss.detach()))
        if log_every and step % log_every == 0:
            print(f"step {step:6d} cd loss {float(loss.detach()):.5f}", flush=True)
    student.eval().requires_grad_(False)
    rec = {"final_loss": sum(tail) / max(len(tail), 1), "steps": steps, "batch": batch, "lr": lr, "ema": ema,
           "seed": seed, "num_steps": num_steps, "wall_s": time.time() - t0,
           "sigma_data": student.sigma_data, "timestep_scaling": student.timestep_scaling}
    return student, rec


# ---- weights -------------------------------------------------------------------------------------
def cm_weights_path(backbone: str, prior: str, num_steps: int = 50) -> Path:
    """Committed CM file for a DDIM grid of ``num_steps`` (50: ``cm_<backbone>_<prior>``, else ``..._n<N>``)."""
    suffix = "" if int(num_steps) == 50 else f"_n{int(num_steps)}"
    return WEIGHTS_DIR / f"cm_{backbone}_{prior}{suffix}.safetensors"


def save_consistency(cm: ConsistencyModel, path: Path, record: dict) -> Path:
    from safetensors.torch import save_file

    from sqdf_bbo.backbones.mlp import sha256_file
    from sqdf_bbo.io import atomic_write_bytes, atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {k: v.contiguous() for k, v in cm.net.state_dict().items() if k not in ("lo", "hi")}
    save_file(state, str(tmp))
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()
    atomic_write_json(path.with_suffix(".json"), {**record, "sha256": sha256_file(path)})
    return path


def load_consistency_mlp(prior: str, lo: Tensor, hi: Tensor, num_steps: int = 50) -> ConsistencyModel:
    """The committed CM of the vector MLP for ``prior`` on a ``num_steps`` DDIM grid; checks its sha256 and
    that it was distilled from the current teacher weights (raises FileNotFoundError / RuntimeError otherwise)."""
    from safetensors.torch import load_file

    from sqdf_bbo.backbones.mlp import MLPDenoiser, sha256_file, weights_path

    path = cm_weights_path("mlp", prior, num_steps)
    if not path.exists():
        raise FileNotFoundError(f"no consistency model for {num_steps} steps at {path}; create it with `python -m "
                                f"sqdf_bbo.pretrain consistency --backbone mlp --prior {prior} --num-steps {num_steps}`")
    meta = json.loads(path.with_suffix(".json").read_text())
    if sha256_file(path) != meta["sha256"]:
        raise RuntimeError(f"checksum mismatch for {path}")
    teacher_sha = sha256_file(weights_path(prior))
    if teacher_sha != meta["teacher_sha256"]:
        raise RuntimeError(f"{path} was distilled from teacher {meta['teacher_sha256'][:12]}, but the current "
                           f"mlp_{prior} weights are {teacher_sha[:12]}; re-run the distillation")
    net = MLPDenoiser(lo=lo, hi=hi, **meta["arch"])
    missing, unexpected = net.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or set(missing) - {"lo", "hi"}:
        raise RuntimeError(f"{path} does not match the MLP architecture (missing {missing}, unexpected {unexpected})")
    cm = ConsistencyModel(net, meta["sigma_data"], meta["timestep_scaling"])
    cm.num_steps = int(meta["num_steps"])
    return cm.eval().requires_grad_(False)


#: tier -> finder(task_info, reference, num_steps) -> CM: a tier whose tasks' consistency models depend on
#: the agent's grid declares them here (the synthetic tier: one committed CM per prior and grid); a task
#: with one fixed CM sets ``TaskInfo.make_consistency_model`` instead. This module knows no task names.
CONSISTENCY_FINDERS: dict[str, Callable[[Any, nn.Module, int], nn.Module]] = {}


def register_consistency_finder(tier: str, finder: Callable[[Any, nn.Module, int], nn.Module]) -> None:
    """Declare how the tasks of ``tier`` find their consistency model for a DDIM grid of ``num_steps``
    (raise FileNotFoundError / RuntimeError when there is none)."""
    CONSISTENCY_FINDERS[tier] = finder


def find_consistency_model(task_info, reference: nn.Module, num_steps: int) -> tuple[Optional[nn.Module], str]:
    """(frozen CM, "") for a task, or (None, reason). Looks at ``task_info.make_consistency_model`` (a
    zero-argument factory) first, then the finder its tier declared (:func:`register_consistency_finder`).
    A CM distilled for another number of steps is rejected (its grid would not contain τ_{k+1})."""
    factory = getattr(task_info, "make_consistency_model", None)
    try:
        if callable(factory):
            cm = factory()
        elif task_info.tier in CONSISTENCY_FINDERS:
            cm = CONSISTENCY_FINDERS[task_info.tier](task_info, reference, num_steps)
        else:
            return None, f"no consistency model registered for tier {task_info.tier!r}"
    except (FileNotFoundError, RuntimeError) as e:
        return None, str(e)
    if getattr(cm, "num_steps", num_steps) != num_steps:
        return None, f"consistency model was distilled for {cm.num_steps} steps, the agent uses {num_steps}"
    return cm.eval().requires_grad_(False), ""


def cm_name(name: str = "unet16") -> str:
    return f"cm_{name}"


def load_consistency_unet(name: str = "unet16", weights_dir: Optional[str | Path] = None):
    """The committed consistency model distilled from PixelUNet ``name``: a frozen
    :class:`sqdf_bbo.consistency.ConsistencyModel` with ``num_steps`` = its DDIM grid size. Checks the CM's
    sha256 and that its teacher is the current ``name`` weights (FileNotFoundError / RuntimeError)."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from sqdf_bbo.backbones.base import default_scheduler
    from sqdf_bbo.backbones.unet import WEIGHTS_DIR, PixelUNet, _paths
    from sqdf_bbo.data.checksum import sha256_of, verify_checksum

    weights_dir = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    st, js = _paths(cm_name(name), weights_dir)
    if not js.exists():
        raise FileNotFoundError(f"no consistency model {st}; create it with "
                                f"`python -m sqdf_bbo.pretrain image --distill --name {name}`")
    verify_checksum(st)
    meta = json.loads(js.read_text())
    teacher_sha = sha256_of(_paths(name, weights_dir)[0])
    if meta["teacher_sha256"] != teacher_sha:
        raise RuntimeError(f"{st.name} was distilled from teacher {meta['teacher_sha256'][:12]}, but {name} is "
                           f"{teacher_sha[:12]}; re-run `python -m sqdf_bbo.pretrain image --distill --name {name}`")
    unet = UNet2DModel(**meta["unet_config"])
    unet.load_state_dict(load_file(str(st)))
    cm = ConsistencyModel(PixelUNet(unet, default_scheduler()), meta["sigma_data"], meta["timestep_scaling"])
    cm.num_steps = int(meta["num_steps"])
    return cm.eval().requires_grad_(False)
