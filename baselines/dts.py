"""Diffusion Tree Sampling (DTS) and its greedy variant DTS*: tree search over the denoising steps of the
frozen pretrained sampler with soft-value backups, against the optimistic proxy; an inference-time peer.

Target: π*(x_N) ∝ p_ref(x_N)·exp(λ r(x_N)), λ = 1/beta (``beta`` on the common KL scale). Its soft value
V(x_k) = (1/λ) log E_{p_ref}[exp(λ r(x_N)) | x_k] satisfies V(x_k) = (1/λ) log E_{p_ref(x_{k+1}|x_k)} exp(λ V(x_{k+1})),
and π*(x_{k+1} | x_k) ∝ p_ref(x_{k+1} | x_k)·exp(λ V(x_{k+1})).

One tree per design (trees run in lockstep, batched). A dummy root has the chain's initial latents x_0 as
children; a node at level k holds x_k (k = 0..N, leaves at N), its estimate v̂ and at most ``branching``
children, all drawn from the pretrained transition. ``rollouts`` iterations per tree, each:

    select:   from the root, while the node has ``branching`` children, go to a child (not yet exhausted)
              drawn ∝ exp(λ v̂) (DTS) or the argmax of v̂ (DTS*, ``greedy``)
    expand:   draw one new child from p_ref(· | x_k) (the root: the initial noise)
    roll out: run the pretrained chain from it to x_N, adding every state to the tree
    back up:  v̂(leaf) = r̂⁺(x_N); along the path to the root v̂(node) = (1/λ) log mean_children exp(λ v̂(child))

The unweighted mean over children is consistent because the children are i.i.d. draws of p_ref(· | x_k)
whatever the search did (visit counts would bias it). Output: DTS a Boltzmann descent, root to leaf, each
step ∝ exp(λ v̂(child)) (a nested importance resampling, exact as the tree grows); DTS* the best leaf.

Cost per design: ``rollouts`` proxy evaluations (one per leaf) and at most rollouts·N pretrained calls
(a rollout that starts at level k costs N − k).

KL to the pretrained model. The target's exact path KL is λ E_π*[r] − log E_p exp(λ r) (the tilt depends
on x_N only, so the bridges are unchanged; the root's children carry the x_0 term). The tree estimates it
per design by λ (r(output) − v̂(root)), averaged over the last proposal call: ``analytic_path_kl``
(so the harness's ``path_kl`` is this target-KL estimate). The realised KL of the atomic finite-tree sampler
is reported too: ``selection_kl`` = Σ over the descent's steps of KL(softmax(λ v̂ of the children) ‖ uniform).
DTS* has no target: ``analytic_path_kl`` is NaN and log(rollouts) is logged as a heuristic scale only.
Before the first proxy refit the proposals are plain pretrained samples. The trees are rebuilt at every
proposal call (no reuse across rounds). η must be > 0. One process only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from sqdf_bbo.agents.online import ProxyGuidedAgent
from sqdf_bbo.registry import preset
from sqdf_bbo.settings import setting

Tensor = torch.Tensor


def soft_mean(values: Tensor, mask: Tensor, lam: float) -> Tensor:
    """(1/λ) log mean_{mask} exp(λ v) per row of values (T, B) over the entries where mask (T, B) is True."""
    lv = torch.where(mask, lam * values, torch.full_like(values, -math.inf))
    return (torch.logsumexp(lv, dim=1) - torch.log(mask.sum(1).clamp(min=1).double())) / lam


def _take(cond: Any, idx: Tensor) -> Any:
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[idx.to(cond.device)]
    return [cond[i] for i in idx.tolist()]


class Forest:
    """T search trees over an N-step chain in flat arrays; node 0 of each tree is the dummy root (level −1).

    x, mean: (T, C, *shape) latent and cached pretrained transition mean of each node; level, parent,
    n_child: (T, C) long; children: (T, C, B) long (−1 = none); value: (T, C) float64 (v̂, reward units);
    closed: (T, C) bool (the subtree can take no more nodes); size: (T,) nodes in use."""

    def __init__(self, trees: int, capacity: int, branching: int, num_steps: int, shape: tuple, dtype, device):
        T, C, B = trees, capacity, branching
        self.T, self.C, self.B, self.N = T, C, B, num_steps
        self.x = torch.zeros((T, C, *shape), dtype=dtype, device=device)
        self.mean = torch.zeros((T, C, *shape), dtype=dtype, device=device)
        self.level = torch.full((T, C), -2, dtype=torch.long)
        self.level[:, 0] = -1
        self.parent = torch.full((T, C), -1, dtype=torch.long)
        self.children = torch.full((T, C, B), -1, dtype=torch.long)
        self.n_child = torch.zeros((T, C), dtype=torch.long)
        self.value = torch.zeros((T, C), dtype=torch.float64)
        self.closed = torch.zeros((T, C), dtype=torch.bool)
        self.size = torch.ones(T, dtype=torch.long)
        self.rows = torch.arange(T)

    def add(self, trees: Tensor, parents: Tensor, x: Tensor) -> Tensor:
        """Append children x (m, *shape) under ``parents`` (m,) of ``trees`` (m,); returns their indices (m,)."""
        idx = self.size[trees]
        if bool((idx >= self.C).any()):
            raise RuntimeError("DTS tree capacity exceeded")
        self.size[trees] += 1
        self.x[trees, idx] = x
        self.level[trees, idx] = self.level[trees, parents] + 1
        self.parent[trees, idx] = parents
        self.children[trees, parents, self.n_child[trees, parents]] = idx
        self.n_child[trees, parents] += 1
        return idx

    def child_logits(self, nodes: Tensor, lam: float, open_only: bool) -> tuple[Tensor, Tensor]:
        """(children (T, B) with −1 → 0, λ v̂ (T, B) with −inf at missing (and, if open_only, closed) ones)."""
        ch = self.children[self.rows, nodes]
        ok = ch >= 0
        chc = ch.clamp(min=0)
        if open_only:
            ok &= ~self.closed[self.rows[:, None], chc]
        logits = torch.where(ok, lam * self.value[self.rows[:, None], chc], torch.tensor(-math.inf, dtype=torch.float64))
        return chc, logits

    def select(self, lam: float, greedy: bool, generator: torch.Generator) -> Tensor:
        """(T,) the node each tree expands this iteration (−1: the tree is exhausted)."""
        node = torch.zeros(self.T, dtype=torch.long)
        expand = torch.full((self.T,), -1, dtype=torch.long)
        done = self.closed[:, 0].clone()
        for _ in range(self.N + 1):
            here = ~done & (self.n_child[self.rows, node] < self.B)
            expand[here] = node[here]
            done |= here
            if bool(done.all()):
                break
            chc, logits = self.child_logits(node, lam, open_only=True)
            if greedy:
                pick = logits.argmax(dim=1)
            else:
                safe = torch.where(done[:, None], torch.zeros_like(logits), logits)  # rows done: any valid row
                pick = torch.multinomial(torch.softmax(safe, dim=1), 1, generator=generator)[:, 0]
            node = torch.where(done, node, chc[self.rows, pick])
        return expand

    def backup(self, trees: Tensor, leaves: Tensor, rewards: Tensor, lam: float) -> None:
        """Leaf values = rewards (m,); then the soft backup and the closed flags along each path to the root."""
        self.value[trees, leaves] = rewards.double()
        self.closed[trees, leaves] = True
        node = leaves
        for _ in range(self.N + 1):
            node = self.parent[trees, node]
            ch = self.children[trees, node]
            ok = ch >= 0
            chc = ch.clamp(min=0)
            self.value[trees, node] = soft_mean(self.value[trees[:, None], chc], ok, lam)
            full = self.n_child[trees, node] == self.B
            self.closed[trees, node] = full & (self.closed[trees[:, None], chc] | ~ok).all(dim=1)

    def descend(self, lam: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Boltzmann descent root → leaf in every tree: (leaf indices (T,), selection KL (T,) nats, the sum
        over steps of KL(softmax(λ v̂ of the children) ‖ uniform over them))."""
        node = torch.zeros(self.T, dtype=torch.long)
        kl = torch.zeros(self.T, dtype=torch.float64)
        for _ in range(self.N + 1):
            chc, logits = self.child_logits(node, lam, open_only=False)
            logp = torch.log_softmax(logits, dim=1)
            p = logp.exp()
            m = (logits > -math.inf).sum(1).double()
            kl += torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(1) + torch.log(m)
            pick = torch.multinomial(p, 1, generator=generator)[:, 0]
            node = chc[self.rows, pick]
        return node, kl

    def best_leaf(self) -> Tensor:
        """(T,) index of the highest-value leaf of each tree."""
        v = torch.where(self.level == self.N, self.value, torch.tensor(-math.inf, dtype=torch.float64))
        return v.argmax(dim=1)


class DTSAgent(ProxyGuidedAgent):
    """Soft-value tree search over the frozen pretrained sampler with the optimistic proxy."""

    steers_sampling: ClassVar[bool] = True

    @dataclass
    class Settings(ProxyGuidedAgent.Settings):
        beta: float = setting(0.1, "common KL scale of the target p_ref·exp(r/beta): λ = 1/beta (reward units per nat)",
                              gt=0)
        rollouts: int = setting(32, "search iterations per design = proxy evaluations per design "
                                    "(pretrained calls <= rollouts·num_steps)", ge=1)
        branching: int = setting(4, "maximum children per node", ge=1)
        greedy: bool = setting(False, "DTS*: greedy selection and the best leaf as the output (no target KL)")
        sample_batch: int = setting(64, "trees searched at once (memory: rollouts·(num_steps+1) latents each)", ge=1)

    @classmethod
    def resolve_config(cls, task, overrides):
        c = super().resolve_config(task, overrides)
        if not float(c["eta"]) > 0:
            raise ValueError(f"DTS needs eta > 0 (with eta=0 every child of a node is the same), got eta={c['eta']}")
        return c

    def __init__(self, task, config=None, seed: int = 0):
        super().__init__(task, config, seed)
        self.policy = self.reference  # nothing is trained
        self.last_kl = 0.0  # target-KL estimate of the last proposal call (nats)
        self.last_selection_kl = 0.0
        self.last_root_value = 0.0

    def analytic_path_kl(self) -> float:
        """The tree's target-KL estimate λ·mean(r(output) − v̂(root)) of the last proposal call (0 before the
        first proxy; NaN for DTS*, which has no target)."""
        if not self.optimistic.fitted:
            return 0.0
        return float("nan") if self.cfg.greedy else self.last_kl

    @torch.no_grad()
    def search(self, T: int, generator: torch.Generator, cond: Any = None) -> Forest:
        """Grow T trees for ``rollouts`` iterations each (module docstring); ``cond``: T conditions or None."""
        N, sched = self.schedule.num_steps, self.schedule
        lam, greedy = 1.0 / self.cfg.beta, self.cfg.greedy
        R = self.cfg.rollouts
        shape = tuple(self.reference.latent_shape)
        param = next(self.reference.parameters())
        f = Forest(T, 1 + R * (N + 1), self.cfg.branching, N, shape, param.dtype, param.device)
        for _ in range(R):
            expand = f.select(lam, greedy, generator)
            trees = torch.nonzero(expand >= 0)[:, 0]
            if len(trees) == 0:
                break
            nodes = expand[trees]
            lvl = f.level[trees, nodes]
            # the new child of each expanded node: initial noise under the root, else mean + s ξ
            x_new = torch.empty((len(trees), *shape), dtype=param.dtype, device=param.device)
            at_root = lvl == -1
            if bool(at_root.any()):
                x_new[at_root.to(param.device)] = self.reference.initial_noise(int(at_root.sum()), generator, sched)
            for k in sorted(set(lvl[~at_root].tolist())):
                sel = lvl == k
                xi = torch.randn((int(sel.sum()), *shape), generator=generator, dtype=param.dtype).to(param.device)
                x_new[sel.to(param.device)] = f.mean[trees[sel], nodes[sel]] + sched.step_std(k, xi) * xi
            cur = f.add(trees, nodes, x_new)
            cur_lvl = lvl + 1
            for k in range(int(cur_lvl.min()), N):  # roll out to x_N, trees in lockstep by level
                sel = cur_lvl == k
                tk, nk = trees[sel], cur[sel]
                x = f.x[tk, nk]
                eps = self.reference_eps(x, sched.timestep_batch(k, len(tk), x.device), _take(cond, tk))
                mu = sched.mean(x, eps, k)
                f.mean[tk, nk] = mu
                xi = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                cur[sel] = f.add(tk, nk, mu + sched.step_std(k, x) * xi)
                cur_lvl[sel] = k + 1
            r = self.reward(f.x[trees, cur]).double().cpu()
            f.backup(trees, cur, r, lam)
        return f

    @torch.no_grad()
    def decode_batch(self, n: int, generator: torch.Generator, cond: Any = None) -> tuple[Tensor, dict]:
        """n designs (n, *design_shape), one tree each, and the batch's statistics (sums over trees)."""
        f = self.search(n, generator, cond)
        lam = 1.0 / self.cfg.beta
        if self.cfg.greedy:
            leaves, sel_kl = f.best_leaf(), torch.zeros(n, dtype=torch.float64)
        else:
            leaves, sel_kl = f.descend(lam, generator)
        r, root = f.value[f.rows, leaves], f.value[:, 0]
        stats = {"kl": float((lam * (r - root)).sum()), "selection_kl": float(sel_kl.sum()),
                 "root_value": float(root.sum())}
        return self.policy.decode(f.x[f.rows, leaves]), stats

    def propose(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        if n == 0:
            return torch.empty((0, *self.task.design_shape))
        if not self.optimistic.fitted:  # plain pretrained samples
            return self._propose_local(n, generator, cond)
        if cond is None and self.task.sample_conditions:
            cond = self.task.sample_conditions(n, generator)
        bs, out, sums = self.cfg.sample_batch, [], {}
        for i in range(0, n, bs):
            m = min(bs, n - i)
            designs, stats = self.decode_batch(m, generator, None if cond is None else cond[i:i + m])
            out.append(designs)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
        self.last_kl, self.last_selection_kl, self.last_root_value = (sums["kl"] / n, sums["selection_kl"] / n,
                                                                      sums["root_value"] / n)
        return torch.cat(out).detach()

    def improve(self) -> dict[str, float]:
        stats = {f"proxy_{k}": v for k, v in self.refit_proxy().items()}
        self.round += 1
        if self.cfg.greedy:
            stats["kl_heuristic_log_rollouts"] = math.log(self.cfg.rollouts)
        return stats


#: DTS* (``dts-star``): greedy selection, the best leaf of each tree as the design; a preset of DTS
DTS_STAR = preset(DTSAgent, "DTSStarAgent", greedy=True)
DTSStarAgent = DTS_STAR.agent_class()
