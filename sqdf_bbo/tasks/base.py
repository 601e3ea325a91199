"""What a task is: an oracle the harness keeps, and a public description agents may see.

``Task`` (harness only) owns the noise-free oracle, its noise level, naturalness and diversity
features. ``TaskInfo`` (what an agent receives) carries only the design space, the pretrained
backbone factory, the proxy feature map and the task's defaults (typed: :class:`RunDefaults`, agent
setting overrides, a consistency-model factory): no agent can reach the oracle through it.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class RunDefaults:
    """The run settings a task chooses (``run.n_eval``, ``run.batch_size`` unless the command line sets them);
    None: the harness's default (256 evaluation samples, batches of 64 designs)."""

    n_eval: Optional[int] = None
    batch_size: Optional[int] = None


@dataclass
class TaskInfo:
    """Public, oracle-free description of a task.

    design_shape: shape of one design; bounds: (lo, hi) tensors of that shape, or None;
    make_backbone(): a fresh pretrained, frozen :class:`~sqdf_bbo.backbones.Backbone`;
    features(x): differentiable proxy feature map (B, *design_shape) -> (B, feature_dim), never the
    oracle's own; sample_conditions(n, generator): per-sample conditions (None if unconditional);
    latent_shape: shape of the backbone's latent when it differs from design_shape (e.g. SD's 4×64×64
    latents of 3×512×512 images); None = the design shape. The path KL is a sum over its elements.

    The task's defaults: run_defaults: :class:`RunDefaults` (``n_eval``, ``batch_size``); agent_defaults:
    agent setting overrides (e.g. ``{"num_steps": 20}``), applied to the methods that have those settings,
    below the user's ``--set``; num_steps: the DDIM steps of the task's pretrained sampler (None: not
    stated); make_consistency_model(): a zero-argument factory of the backbone's consistency model (read by
    ``sqdf_bbo.consistency.find_consistency_model``; None: the tier's committed ones, if any).
    """

    name: str
    tier: str
    design_shape: tuple[int, ...]
    make_backbone: Callable[[], Any]
    features: Callable[[Tensor], Tensor]
    feature_dim: int
    bounds: Optional[tuple[Tensor, Tensor]] = None
    sample_conditions: Optional[Callable[[int, torch.Generator], Any]] = None
    latent_shape: Optional[tuple[int, ...]] = None
    run_defaults: RunDefaults = field(default_factory=RunDefaults)
    agent_defaults: dict = field(default_factory=dict)
    num_steps: Optional[int] = None
    make_consistency_model: Optional[Callable[[], Any]] = None

    def defaults_dict(self) -> dict:
        """The typed defaults as one dict, the form protocol ids hash (``sqdf_bbo.protocol.task_defaults``):
        ``num_steps``, ``n_eval``, ``batch_size``, ``agent``, ``consistency``, each key present only where its
        field is set (None or an empty ``agent_defaults``: absent). A new dict: writing into it changes
        nothing."""
        out: dict = {}
        if self.num_steps is not None:
            out["num_steps"] = self.num_steps
        if self.run_defaults.n_eval is not None:
            out["n_eval"] = self.run_defaults.n_eval
        if self.run_defaults.batch_size is not None:
            out["batch_size"] = self.run_defaults.batch_size
        if self.agent_defaults:
            out["agent"] = self.agent_defaults
        if self.make_consistency_model is not None:
            out["consistency"] = self.make_consistency_model
        return out

    def agent_copy(self) -> "TaskInfo":
        """The copy an agent receives: its bounds, defaults, feature module and the tensors its factories
        hold (partial arguments, closure cells) are copies, so an agent that writes into them in place
        changes nothing the harness uses. Bound methods (e.g. a large view's) are shared as they are."""
        return dataclasses.replace(self, **{f.name: _isolated(getattr(self, f.name)) for f in dataclasses.fields(self)})




def _isolated(obj: Any, memo: Optional[dict] = None) -> Any:
    """obj with every tensor, module and container reachable through it copied, looking inside
    functools.partial arguments and closure cells (which copy.deepcopy treats as atoms)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, functools.partial):
        out = functools.partial(_isolated(obj.func, memo), *(_isolated(a, memo) for a in obj.args),
                                **{k: _isolated(v, memo) for k, v in obj.keywords.items()})
    elif isinstance(obj, types.FunctionType) and obj.__closure__:
        cells = []
        for c in obj.__closure__:
            try:
                cells.append(types.CellType(_isolated(c.cell_contents, memo)))
            except ValueError:  # an empty cell
                cells.append(types.CellType())
        out = types.FunctionType(obj.__code__, obj.__globals__, obj.__name__, obj.__defaults__, tuple(cells))
        out.__kwdefaults__ = copy.copy(obj.__kwdefaults__)
        out.__dict__.update(obj.__dict__)
        out.__qualname__, out.__module__ = obj.__qualname__, obj.__module__
    elif isinstance(obj, dict):
        out = type(obj)((k, _isolated(v, memo)) for k, v in obj.items()) if type(obj) is dict else copy.deepcopy(obj)
    elif isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        out = type(obj)(_isolated(v, memo) for v in obj)
    elif isinstance(obj, (torch.Tensor, torch.nn.Module, np.ndarray)):
        out = copy.deepcopy(obj)
    else:  # numbers, strings, plain functions, bound methods, classes: shared
        out = obj
    memo[id(obj)] = out
    return out


class Task:
    """Harness-side task. Subclasses implement :meth:`evaluate_true` and fill :attr:`info`.

    Values are maximised. ``noise_std`` is the std of the Gaussian observation noise the environment
    adds. ``optimal_value`` is the best known noise-free value (None if unknown).
    """

    info: TaskInfo
    noise_std: float = 0.0
    optimal_value: Optional[float] = None
    differentiable: bool = False

    @property
    def name(self) -> str:
        return self.info.name

    def evaluate_true(self, designs: Tensor) -> Tensor:
        """Noise-free oracle values, (B, *design_shape) -> (B,) float64."""
        raise NotImplementedError

    def naturalness(self, designs: Tensor) -> dict[str, float]:
        """Task-specific naturalness summaries of a batch (e.g. prior log-density, invalid fraction)."""
        return {}

    def valid_mask(self, designs: Tensor) -> Optional[Tensor]:
        """(B, *design_shape) -> (B,) bool, True = a valid (natural) design; None when the task defines no
        validity. Diversity is also reported over the valid designs only (``vendi_valid``, ``n_valid``)."""
        return None

    def diversity_features(self, designs: Tensor) -> Tensor:
        """Features in which diversity is measured, (B, F). Defaults to the flattened design."""
        return designs.reshape(designs.shape[0], -1).double()

    #: kernel bandwidth for the Vendi score in ``diversity_features`` space (None = cosine kernel)
    vendi_bandwidth: Optional[float] = None

    def harness_reference(self) -> Any:
        """The harness's own frozen pretrained backbone, against which evaluation samples are drawn and the
        path KL is measured (never the agent's copy). Default: a fresh ``info.make_backbone()``; None makes the
        harness use the agent's reference (the SD tier, where a second copy of the weights is too large)."""
        ref = self.info.make_backbone() if self.info.make_backbone is not None else None
        if ref is not None:
            ref.eval().requires_grad_(False)
        return ref

    def eval_conditions(self, n: int) -> Any:
        """Held-out conditions (e.g. evaluation prompts) for the harness's evaluation; None if unconditional."""
        return None

    def extra_values(self, designs: Tensor) -> dict[str, Tensor]:
        """Extra per-design diagnostics logged beside the oracle value (e.g. a ground-truth score)."""
        return {}

    #: write a sample grid (samples_round<k>.png) after every round, not only the latest samples.png
    render_each_round: bool = False

    def design_columns(self, designs: Tensor) -> Optional[np.ndarray]:
        """(n, d) float values logged as columns x0..x{d-1} of queries.csv, or None to keep the designs in
        ``designs/round<k>.npy`` instead (:meth:`design_array`). Default: the flattened design if d <= 64."""
        flat = designs.reshape(designs.shape[0], -1)
        return flat.double().cpu().numpy() if flat.shape[1] <= 64 else None

    def design_array(self, designs: Tensor) -> np.ndarray:
        """The array stored in ``designs/round<k>.npy`` for designs without columns. Default: float32 as is."""
        return designs.detach().float().cpu().numpy()

    def render(self, designs: Tensor, path: str, title: str = "", reference: Optional[Tensor] = None) -> None:
        """Write a PNG picture of a batch of designs (tier-specific); ``reference`` = pretrained samples."""
        raise NotImplementedError
