"""The SEIKO-style online loop every fine-tuning method shares (the SEIKO and SQDF papers' online protocol).

Per round the harness queries fresh designs and calls the method's ``improve()``, which each method
writes out top to bottom with the helpers of :class:`OnlineFinetuneAgent`::

    if self.begin_round():          # refit the optimistic proxy r̂⁺ on every observation, new AdamW
        ...                         # the method's start-of-round work (reset a buffer, freeze a reference)
    for _ in self.round_steps():    # updates_per_round optimizer steps (resumable mid-round)
        loss, info = ...            # the method's loss
        loss.backward()
        info["grad_norm"] = self.clip_and_step()
        self.record_step(info)
    return self.end_round()         # proxy-fit statistics + per-step means

Methods optimise :meth:`reward`, the proxy's optimistic prediction in *standardised units*:
(r̂⁺ - m0)/s0 with m0, s0 the mean and std of the first round's observed values (frozen for the run), so
one beta means the same on every task.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Iterator, Optional

import torch

from sqdf_bbo.agents.base import DiffusionAgent
from sqdf_bbo.backbones.lora import merged_sampling_copy
from sqdf_bbo.diffusion import Trajectory
from sqdf_bbo.proxy import ProxySettings, proxy_settings
from sqdf_bbo.proxy.optimistic import OptimisticReward
from sqdf_bbo.settings import setting
from sqdf_bbo.tasks.base import TaskInfo

Tensor = torch.Tensor


class ProxyGuidedAgent(DiffusionAgent):
    """A diffusion agent guided by the run's optimistic proxy r̂⁺ (``self.optimistic``, an
    :class:`sqdf_bbo.proxy.optimistic.OptimisticReward` it owns): observations go to it as proxy features,
    :meth:`refit_proxy` fits it, :meth:`reward_of_designs` scores designs in standardised units. Base of the
    fine-tuners (:class:`OnlineFinetuneAgent`) and of the inference-time methods."""

    @dataclass
    class Settings(DiffusionAgent.Settings, ProxySettings):
        pass

    def __init__(self, task: TaskInfo, config: Optional[dict] = None, seed: int = 0):
        super().__init__(task, config, seed)
        self.optimistic = OptimisticReward()
        self.round = 0

    def proxy_settings(self) -> ProxySettings:
        """The proxy's settings as one typed value, taken from this agent's settings (checked when they were
        resolved, so not again here). An untyped plug-in's plain config is checked here instead, its
        missing proxy keys taking the defaults."""
        if self.typed_settings() is not None:
            return ProxySettings(**{f.name: getattr(self.cfg, f.name) for f in fields(ProxySettings)})
        return proxy_settings({f.name: getattr(self.cfg, f.name) for f in fields(ProxySettings)
                               if hasattr(self.cfg, f.name)})

    def build_for_checkpoint(self, path: str, desc: dict):
        """An unfitted proxy of the configured architecture for a saved one (its weights are loaded next)."""
        if desc["k"] == "module" and desc["class"].endswith(".ProxyModel"):
            from sqdf_bbo.proxy import ProxyModel
            from sqdf_bbo.proxy.mlp import EnsembleMLP

            s, F = self.proxy_settings(), int(self.task.feature_dim)
            heads = s.proxy_heads if s.proxy == "bootstrap" else 1
            net = EnsembleMLP(heads, F, hidden=s.proxy_hidden, arch=s.proxy_arch)
            return ProxyModel(net, s.proxy, torch.zeros(F), torch.ones(F), 0.0, 1.0)
        return super().build_for_checkpoint(path, desc)

    def observe(self, designs: Tensor, values: Tensor) -> None:
        """Store the designs' proxy features (computed in ``sample_batch`` chunks) and observed values."""
        bs = self.cfg.sample_batch
        with torch.no_grad():
            feats = torch.cat([self.task.features(designs[i:i + bs].float()).detach().cpu()
                               for i in range(0, len(designs), bs)])
        self.optimistic.add(feats, values)

    def refit_proxy(self) -> dict[str, float]:
        """Refit r̂⁺ on every observation so far; the fit's statistics."""
        return self.optimistic.refit(self.proxy_settings(), self.generator, self.dp)

    def reward_of_designs(self, designs: Tensor) -> Tensor:
        """Optimistic proxy reward of designs in standardised units, (B, *design_shape) -> (B,)."""
        return self.optimistic(self.task.features(designs))

    def reward(self, z: Tensor) -> Tensor:
        """Differentiable optimistic reward of final latents z (B, *latent_shape) -> (B,)."""
        return self.reward_of_designs(self.policy.decode(z))


class OnlineFinetuneAgent(ProxyGuidedAgent):
    """Base class of the fine-tuners: a LoRA (or full-weight) policy, AdamW, gradient clipping and the
    resumable round helpers (begin_round / round_steps / record_step / end_round) that each method's
    ``improve()`` calls."""

    @dataclass
    class Settings(ProxyGuidedAgent.Settings):
        updates_per_round: int = setting(40, "optimizer steps per round", ge=0)
        lr: float = setting(1e-3, "AdamW learning rate (a new AdamW every round)", gt=0)
        weight_decay: float = setting(0.1, "AdamW weight decay", ge=0)
        max_grad_norm: float = setting(5.0, "global gradient-norm clip", gt=0)
        lora_rank: int = setting(4, "LoRA rank of the policy (0 = full-weight fine-tuning)", ge=0)

    def __init__(self, task: TaskInfo, config: Optional[dict] = None, seed: int = 0):
        super().__init__(task, config, seed)
        rank = self.cfg.lora_rank
        self.policy.requires_grad_(False)
        if rank > 0 and self.policy.lora_targets():
            self.policy.add_lora(rank)
        else:
            self.policy.requires_grad_(True)
        self.policy.train()
        if hasattr(self.cfg, "beta"):  # the KL-scale mapping (kl_scale.py) assumed D = the task's latent elements
            from sqdf_bbo.agents.kl_scale import latent_elements

            D, shape = latent_elements(task), tuple(self.reference.latent_shape)
            if D != int(torch.Size(shape).numel()):
                raise ValueError(f"task {task.name!r} declares {D} latent elements but its backbone's latent has "
                                 f"shape {shape}; set TaskInfo.latent_shape so beta maps onto the right KL scale")
        self.global_step = 0
        self.round_progress: Optional[dict] = None  # within improve(): proxy stats, stat sums, steps done

    # ---- sampling ----------------------------------------------------------------------------------
    #: policies with at most this many parameters are sampled (without grad) through a merged copy
    MERGE_FOR_SAMPLING_MAX_PARAMS: ClassVar[int] = 5_000_000
    #: the merged sampling copy is rebuilt from the policy, never saved
    CHECKPOINT_SKIP: ClassVar[tuple[str, ...]] = ("_sampling_copy",)

    def sampling_policy(self) -> torch.nn.Module:
        """The module used for no-grad sampling: for a small LoRA policy, a plain copy of the network holding
        the merged weights W + ΔW, refreshed at every call (``sqdf_bbo.backbones.lora.merged_sampling_copy``:
        the same function, ~2x faster on CPU); otherwise the policy itself. A module returned earlier is
        refreshed too: use it before the next call."""
        module = merged_sampling_copy(self.policy, getattr(self, "_sampling_copy", None),
                                      self.MERGE_FOR_SAMPLING_MAX_PARAMS)
        if module is not self.policy:
            self._sampling_copy = module
        return module

    def _sample_with(self, pol, n: int, generator: torch.Generator, cond: Any = None, **kw) -> Trajectory:
        eps_fn = None if pol is self.policy else pol
        return DiffusionAgent.sample(self, n, generator, cond=cond, eps_fn=eps_fn, **kw)

    def sample(self, n: int, generator: torch.Generator, cond: Any = None, **kw) -> Trajectory:
        """As DiffusionAgent.sample; no-grad sampling goes through :meth:`sampling_policy`."""
        if kw.get("grad", False):
            return super().sample(n, generator, cond=cond, **kw)
        return self._sample_with(self.sampling_policy(), n, generator, cond=cond, **kw)

    def sample_batched(self, n: int, generator: torch.Generator, cond: Any = None, **kw) -> list[Trajectory]:
        """As DiffusionAgent.sample_batched, merging the LoRA weights once for all chunks."""
        if kw.get("grad", False):
            return super().sample_batched(n, generator, cond=cond, **kw)
        bs = self.cfg.sample_batch
        pol = self.sampling_policy()
        return [self._sample_with(pol, min(bs, n - i), generator, cond=None if cond is None else cond[i:i + bs], **kw)
                for i in range(0, n, bs)]

    # ---- optimisation ----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.trainable_parameters(), lr=self.cfg.lr,
                                 betas=(0.9, 0.999), eps=1e-8, weight_decay=self.cfg.weight_decay)

    PER_PROCESS_KEYS: ClassVar[tuple[str, ...]] = ("train_batch",)

    def setup_data_parallel(self, dp) -> None:
        """Start every process from rank 0's trainable weights."""
        dp.broadcast_parameters(self.trainable_parameters())

    def clip_and_step(self) -> float:
        """Clip the global grad norm to ``max_grad_norm``, step, zero grads; returns the pre-clip norm.

        Under data parallelism the gradients are first averaged over processes (each process's loss
        is a mean over its equal share), so every process takes the same step."""
        self.dp.all_reduce_grads(self.trainable_parameters())
        norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return float(norm)

    # ---- one round, written out by each method's improve() ---------------------------------------
    def begin_round(self) -> bool:
        """Open a round: refit the proxy and start a new AdamW. Returns False (and does nothing) when a
        mid-round checkpoint already opened this round; the method's own start-of-round work (reset a
        buffer, freeze a KL reference) then stays as the checkpoint restored it."""
        if self.round_progress is not None:
            return False
        stats = {f"proxy_{k}": v for k, v in self.refit_proxy().items()}
        self.optimizer = self.make_optimizer()
        self.round_progress = {"stats": stats, "sums": {}, "done": 0}
        return True

    def round_steps(self) -> Iterator[int]:
        """The indices of the round's remaining optimizer steps (``updates_per_round`` in all). After each
        step's body the step counts as done and the run may write a mid-round checkpoint, so a resumed
        round continues at the next step and returns the same statistics as an uninterrupted one."""
        p = self.round_progress
        self.policy.train()
        while p["done"] < self.cfg.updates_per_round:
            yield p["done"]
            p["done"] += 1
            self.report_step(p["done"])  # the runner may checkpoint here (Agent.step_callback)
        self.policy.eval()

    def record_step(self, *infos: dict[str, float]) -> None:
        """Add one step's statistics to the round's sums (end_round reports their means)."""
        sums = self.round_progress["sums"]
        for info in infos:
            for k, v in info.items():
                sums[k] = sums.get(k, 0.0) + float(v)

    def end_round(self) -> dict[str, Any]:
        """Close the round: the proxy refit's statistics and the mean of every recorded step statistic."""
        p, n = self.round_progress, self.cfg.updates_per_round
        self.round_progress = None
        self.round += 1
        return dict(p["stats"], **{k: v / max(n, 1) for k, v in p["sums"].items()})
