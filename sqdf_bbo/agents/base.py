"""The agent interface every method implements, and the shared diffusion-agent plumbing.

The harness drives an agent with three calls per round:

    designs = agent.propose(n, generator)   # (n, *design_shape) tensor; the harness queries the oracle
    agent.observe(designs, values)          # values: (n,) float64 observed (noisy) oracle values
    stats = agent.improve()                 # refit proxy + fine-tune; returns a dict of floats to log

Agents never see the oracle, the environment or noise-free values. ``default_config`` lists every
hyperparameter an agent accepts; unknown keys are rejected with the allowed list. Built-in agents declare
a typed ``Settings`` dataclass (sqdf_bbo/settings.py: a type, default, one-line doc and range per field)
and ``default_config`` is derived from it; ``--set`` values are then coerced and range-checked when the
run is built. A plug-in agent may give a plain ``default_config`` dict instead (values taken as parsed).
"""
from __future__ import annotations

import copy
import types
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from sqdf_bbo import settings as _settings
from sqdf_bbo.settings import setting

from sqdf_bbo.diffusion import DDIMSchedule, Trajectory, sample_trajectory
from sqdf_bbo.distributed import SingleProcess
from sqdf_bbo.tasks.base import TaskInfo

Tensor = torch.Tensor


class Agent:
    """Base class. Subclasses set ``Settings`` (or a plain ``default_config``) and override
    propose/observe/improve."""

    default_config: ClassVar[dict] = {}
    #: True for inference-time methods whose designs come from propose() (e.g. best-of-N), not from the
    #: diffusion policy's own samples: the harness then evaluates through propose() and reports the
    #: method's ``analytic_path_kl()`` (a closed form of its sampling rule) as the path KL
    steers_sampling: ClassVar[bool] = False
    #: typed settings dataclass (None: untyped ``default_config``); see sqdf_bbo/settings.py
    Settings: ClassVar[Optional[type]] = None
    _typed_defaults: ClassVar[Optional[dict]] = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "Settings" in cls.__dict__ and cls.Settings is not None:
            cls.default_config = cls._typed_defaults = _settings.defaults(cls.Settings)

    @classmethod
    def typed_settings(cls) -> Optional[type]:
        """The Settings dataclass if ``default_config`` comes from it (not overridden by a plain dict)."""
        return cls.Settings if cls.Settings is not None and cls.default_config is cls._typed_defaults else None

    def __init__(self, task: TaskInfo, config: Optional[dict] = None, seed: int = 0):
        self.task = task
        self.seed = int(seed)
        self.config = self.resolve_config(task, config or {})  # plain dict: provenance, checkpoints, protocol
        typed = self.typed_settings()
        #: the resolved settings, resolved once: an instance of ``Settings`` (attribute access, typed), or a
        #: namespace of the plain ``default_config`` keys for an untyped plug-in agent
        self.cfg = typed(**self.config) if typed is not None else types.SimpleNamespace(**self.config)

    @classmethod
    def resolve_config(cls, task: TaskInfo, overrides: dict) -> dict:
        """Defaults <- task defaults for known keys <- user overrides (unknown keys raise); typed settings
        are coerced to their field types and range-checked (one-line ValueError naming the key)."""
        typed = cls.typed_settings()
        if typed is not None:
            return _settings.resolve(typed, overrides, task.agent_defaults, owner=f"method {cls.__name__}")
        defaults = dict(cls.default_config)
        bad = sorted(set(overrides) - set(defaults))
        if bad:
            raise ValueError(
                f"unknown setting(s) {', '.join(map(repr, bad))} for method {cls.__name__}; "
                f"allowed: {', '.join(sorted(defaults)) or '(none)'}"
            )
        for k, v in task.agent_defaults.items():
            if k in defaults:
                defaults[k] = v
        defaults.update(overrides)
        return defaults

    def propose(self, n: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def proposal_chunk(self) -> Optional[int]:
        """k such that proposing n designs as consecutive ``propose(k)`` calls (the last one shorter) with the
        same generator gives the same designs as one ``propose(n)``, so the runner can checkpoint between
        them; None (the default): only in one call."""
        return None

    def observe(self, designs: Tensor, values: Tensor) -> None:
        pass

    def improve(self) -> dict[str, float]:
        return {}

    # ---- checkpoints (sqdf_bbo/checkpoint.py: safetensors + JSON, no pickle) --------------------------
    #: attributes __init__ rebuilds from (task, config, seed): never saved; a subclass adds its own
    CHECKPOINT_SKIP: ClassVar[tuple[str, ...]] = ("task", "config", "cfg", "seed", "dp",
                                                  "step_callback")

    def _skipped(self) -> set[str]:
        return {name for cls in type(self).__mro__ for name in cls.__dict__.get("CHECKPOINT_SKIP", ())}

    def state_tree(self) -> dict[str, Any]:
        """Everything the agent learned or drew since __init__: its attributes minus :attr:`CHECKPOINT_SKIP`.
        An attribute that *is* a skipped one (e.g. ``kl_ref`` still pointing at ``reference``) is saved
        as that name, not as a copy."""
        skip = self._skipped()
        alias = {id(getattr(self, n)): n for n in skip if isinstance(getattr(self, n, None), torch.nn.Module)}
        return {name: (_Alias(alias[id(v)]) if id(v) in alias else v)
                for name, v in vars(self).items() if name not in skip}

    def load_state_tree(self, desc: dict, tensors: dict) -> None:
        """Load a saved :meth:`state_tree` into this freshly built agent (same task, config and seed)."""
        from sqdf_bbo.checkpoint import CheckpointError, decode

        skip = self._skipped()
        missing = sorted(set(vars(self)) - skip - set(desc))
        if missing:
            raise CheckpointError(f"checkpoint lacks agent state {missing[:3]} that the current code has "
                                  f"(written by other code?)")
        frozen = {id(getattr(self, n)) for n in skip if getattr(self, n, None) is not None}
        for name, d in desc.items():
            if d.get("k") == "alias":
                setattr(self, name, getattr(self, d["v"]))
                continue
            current = getattr(self, name, None)
            if id(current) in frozen:  # e.g. kl_model still aliasing reference: never load into the reference
                current = None
            setattr(self, name, decode(d, name, tensors, current, self.build_for_checkpoint))
        self.after_load()

    def build_for_checkpoint(self, path: str, desc: dict) -> Any:
        """An empty module or optimizer for a saved one the fresh agent lacks (None: cannot)."""
        return None

    def after_load(self) -> None:
        """Hook after :meth:`load_state_tree` (e.g. refit a model that is not saved)."""

    # ---- what the runner hands the agent, and asks of it ----------------------------------------------
    #: set by the runner for the length of improve() (None outside it, and when nothing listens): an object
    #: whose ``step_done(done)`` an agent that can resume mid-improve calls after each optimizer step, through
    #: :meth:`report_step` (sqdf_bbo/harness/callbacks.py ``StepCallback``: the runner may checkpoint then)
    step_callback: ClassVar[Optional[Any]] = None

    def report_step(self, done: int) -> None:
        """Tell the runner that the round's ``done``-th optimizer step is finished (``round_steps`` does)."""
        if self.step_callback is not None:
            self.step_callback.step_done(int(done))

    def evaluation_sampler(self, settings: Optional[dict] = None) -> Optional["EvaluationSampler"]:
        """What the harness's evaluation needs to draw this agent's samples itself (:class:`EvaluationSampler`),
        or None (the default): the harness then evaluates the designs of :meth:`propose`. ``settings``: the
        harness's own copy of this agent's resolved settings, which the schedule is read from (None: the
        agent's own)."""
        return None


@dataclass(frozen=True)
class _Alias:
    """A state-tree entry that is another (skipped) attribute of the agent, by name."""

    name: str


@dataclass(frozen=True)
class EvaluationSampler:
    """A diffusion policy as the harness's evaluation samples it (sqdf_bbo/harness/evaluate.py): with its own
    DDIM schedule of ``num_steps`` steps and ``eta``, its own noise, in batches of ``batch`` trajectories,
    calling ``policy(x_t, t, cond)`` (the noise predictor) at every step. ``reference``: the agent's frozen
    pretrained backbone, used only where the task gives the harness none of its own."""

    policy: Any
    num_steps: int
    eta: float
    batch: int
    reference: Any = None

    @classmethod
    def from_settings(cls, policy: Any, settings: Any, reference: Any = None) -> "EvaluationSampler":
        """The sampler of a :class:`DiffusionAgent`'s settings: ``num_steps``, ``eta``, ``sample_batch``."""
        return cls(policy, int(settings["num_steps"]), float(settings["eta"]), int(settings["sample_batch"]), reference)


class DiffusionAgent(Agent):
    """An agent whose policy is a copy of the task's pretrained backbone.

    Holds ``reference`` (frozen pretrained backbone), ``policy`` (trainable copy), ``schedule``
    (DDIM with the task's number of steps and eta), and the dataset of every observation so far
    (``designs``, ``values``). Subclasses implement :meth:`improve`.
    """

    @dataclass
    class Settings:
        num_steps: int = setting(50, "DDIM steps per sample (the task may set its own default)", ge=1)
        eta: float = setting(1.0, "DDIM eta: 1 = DDPM-like stochastic steps (SQDF, SEIKO, AM), 0 = deterministic", ge=0)
        sample_batch: int = setting(256, "trajectories per no-grad sampling batch (memory)", ge=1)

    @classmethod
    def resolve_config(cls, task: TaskInfo, overrides: dict) -> dict:
        if task.make_backbone is None:
            raise ValueError(f"task {task.name!r} has no pretrained diffusion backbone (TaskInfo.make_backbone is "
                             f"None), which method {cls.__name__} needs; use a method without one, e.g. 'random'")
        return super().resolve_config(task, overrides)

    #: the data-parallel group: the stateless one-process identity unless the runner joins the agent to a
    #: real group (sqdf_bbo.distributed.join), so agent code calls self.dp.<collective> without branching
    dp = SingleProcess()
    #: config keys counting samples per update or rollout; under data parallelism over P processes
    #: each process uses 1/P of the value, so the union over processes is the configured value
    PER_PROCESS_KEYS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, task: TaskInfo, config: Optional[dict] = None, seed: int = 0):
        super().__init__(task, config, seed)
        backbone = task.make_backbone()
        split = getattr(backbone, "make_policy_and_reference", None)
        if split is not None:  # e.g. Stable Diffusion: one shared UNet, the reference runs with adapters off
            self.policy, self.reference = split()
        else:
            self.reference = backbone
            self.reference.requires_grad_(False).eval()
            self.policy = copy.deepcopy(self.reference)
        self.schedule = DDIMSchedule.from_scheduler(
            self.reference.scheduler, self.cfg.num_steps, self.cfg.eta
        )
        self.generator = torch.Generator().manual_seed(self.seed)  # the agent's own randomness
        self.designs: list[Tensor] = []
        self.values: list[Tensor] = []

    # ---- sampling --------------------------------------------------------------------------------
    def policy_eps(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.policy(x, t, cond)

    def reference_eps(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.reference(x, t, cond)

    def sample(self, n: int, generator: torch.Generator, cond: Any = None, eps_fn=None, **kw) -> Trajectory:
        """n trajectories from the current policy (no grad unless ``grad=True`` is passed); ``cond``
        overrides the training conditions (the harness passes held-out evaluation prompts); ``eps_fn``
        replaces :meth:`policy_eps` (e.g. an equivalent merged-LoRA copy of the policy)."""
        if cond is None and self.task.sample_conditions:
            cond = self.task.sample_conditions(n, generator)
        x0 = self.reference.initial_noise(n, generator, self.schedule)
        return sample_trajectory(eps_fn or self.policy_eps, self.schedule, x0, cond=cond, generator=generator, **kw)

    def sample_batched(self, n: int, generator: torch.Generator, cond: Any = None, **kw) -> list[Trajectory]:
        """n trajectories in chunks of ``sample_batch``; ``cond`` (n conditions or None) is split with them,
        other keyword arguments go to :meth:`sample`."""
        bs = self.cfg.sample_batch
        return [self.sample(min(bs, n - i), generator, cond=None if cond is None else cond[i:i + bs], **kw)
                for i in range(0, n, bs)]

    def propose(self, n: int, generator: torch.Generator) -> Tensor:
        if not self.dp.distributed:
            return self._propose_local(n, generator)
        # every process draws the same seed from the harness's generator, then its own noise from it
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return self.dp.sample_sharded(lambda m: self._propose_local(m, self.dp.local_generator(seed)), n)

    def proposal_chunk(self) -> Optional[int]:
        """``sample_batch``: propose() draws its designs batch by batch from the generator (conditions
        included), so batch-sized calls reproduce one large call. None for subclasses that propose
        differently (they override propose or _propose_local) and under data parallelism."""
        own = type(self).propose is DiffusionAgent.propose and type(self)._propose_local is DiffusionAgent._propose_local
        return self.cfg.sample_batch if own and not self.dp.distributed else None

    def _propose_local(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        """n decoded policy samples (n, *design_shape), no grad; ``cond``: n conditions or None (drawn)."""
        if n == 0:
            return torch.empty((0, *self.task.design_shape))
        with torch.no_grad():
            return torch.cat([self.policy.decode(tr.final) for tr in self.sample_batched(n, generator, cond=cond)])

    # ---- data parallelism (sqdf_bbo.distributed) ---------------------------------------------------
    CHECKPOINT_SKIP: ClassVar[tuple[str, ...]] = ("reference", "schedule")

    def build_for_checkpoint(self, path: str, desc: dict) -> Any:
        """A copy of the policy for a saved policy-shaped module (e.g. SEIKO's previous-round model), an
        optimizer over the trainable parameters for a saved optimizer."""
        if desc["k"] == "module" and desc["class"] == f"{type(self.policy).__module__}.{type(self.policy).__qualname__}":
            return copy.deepcopy(self.policy).eval().requires_grad_(False)
        if desc["k"] == "optim" and hasattr(self, "make_optimizer"):
            return self.make_optimizer()
        return None

    def setup_data_parallel(self, dp) -> None:
        """Hook run once, when the agent first joins a data-parallel run (``sqdf_bbo.distributed.join``; not
        on re-attach after resume)."""

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("dp", None)  # process-group handles do not pickle; the runner re-attaches
        return state

    def observe(self, designs: Tensor, values: Tensor) -> None:
        self.designs.append(designs.detach().cpu())
        self.values.append(torch.as_tensor(values, dtype=torch.float64).cpu())

    @property
    def dataset(self) -> tuple[Tensor, Tensor]:
        """All observations so far: designs (n, *design_shape), values (n,)."""
        if not self.designs:
            return torch.empty(0, *self.task.design_shape), torch.empty(0, dtype=torch.float64)
        return torch.cat(self.designs), torch.cat(self.values)

    # ---- what the harness's evaluation samples ------------------------------------------------------
    def evaluation_sampler(self, settings: Optional[dict] = None) -> Optional[EvaluationSampler]:
        """The policy, sampled by the harness (None for methods that steer sampling: their designs come from
        propose()): the module of ``sampling_policy()`` where the agent has one (e.g. merged LoRA weights),
        else ``policy``; the schedule of ``settings`` (the harness's copy; None: this agent's)."""
        if self.steers_sampling:
            return None
        choose = getattr(self, "sampling_policy", None)
        policy = choose() if callable(choose) else self.policy
        return EvaluationSampler.from_settings(policy, self.config if settings is None else settings, self.reference)
