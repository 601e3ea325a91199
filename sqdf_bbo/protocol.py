"""The protocol id of a run: which computation its numbers come from, so runs of different protocols are
never pooled into one table row.

Every run's config.json records ``protocol`` (e.g. ``v1-3fa9c2d18e0b``: ``PROTOCOL_VERSION``, then the first
12 hex digits of the sha256 of a canonical JSON) and ``protocol_inputs`` (that JSON, to see why two ids
differ). The inputs, and nothing else:

- ``protocol_version``: :data:`PROTOCOL_VERSION`, bumped by hand when the harness changes what it computes
  (the run loop, the environment, the evaluation, the metrics, the DDIM sampler, the backbones' code);
- ``task`` / ``method``: the name, a per-component version tag (the task's or agent class's optional
  ``protocol_version`` attribute, default 1: bump it when that task's oracle or that method's algorithm
  changes) and the resolved settings: the agent's resolved config; the task's resolved settings (its
  ``cfg`` where it keeps one, else the overrides given), noise level, optimum, design shape and defaults
  (the typed TaskInfo fields as one dict: :func:`task_defaults`);
- ``run``: budget, the resolved round sizes, process count and every ``run.*`` setting except those that
  cannot change a result (:data:`NON_RESULT_RUN_SETTINGS`: tracker, checkpoint cadence, oracle retries);
  ``precision=auto`` as what it picked on the machine;
- ``assets``: the sha256 of every file under the embedded weight and asset folders (:data:`ASSET_DIRS`):
  a retrained prior, oracle or consistency model is a new protocol (for every task: conservative).

Not inputs: the seed (seeds of one protocol are pooled), the code text and the commit (a refactor that
computes the same thing keeps the id), library versions, the machine and the thread count (they change float
rounding, not the computation; config.json records them beside the id: ``versions``, ``cpu_model``,
``torch_threads``). The canonical JSON sorts keys and writes every number as a float, so key order and
``1`` vs ``1.0`` do not matter; a setting added later is left out at the value that reproduces the earlier
computation (:data:`NEUTRAL_AT`). Weights outside the package (the Stable Diffusion tier) enter only
through the path or name in the task's settings.

``task_protocol`` (:func:`task_protocol_of`) is the id of the version, task and asset inputs alone: what
every method compared on one task must share. ``benchmarks/run_records.py`` refuses a table whose row
pools runs of several protocols, or whose task mixes task protocols; runs made before ids existed are
``legacy``.

Forgetting a bump is what the golden fingerprints guard against: :func:`fingerprints` computes small
deterministic numbers per component (each synthetic oracle on fixed designs, two DDIM steps and the path KL
of pretrained MLPs from fixed noise, the image UNet's noise prediction, the harness's evaluation and metrics
on fixed inputs, the image oracle); tests/test_protocol.py compares them with committed values and, when one moves, says which
version to bump. ``python -m sqdf_bbo.protocol --fingerprints`` prints the current values.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import platform
from pathlib import Path
from typing import Any, Callable, Optional

#: bump when the harness changes what runs compute (see the module docstring)
PROTOCOL_VERSION = 1
#: run settings that cannot change a result
NON_RESULT_RUN_SETTINGS = ("tracker", "checkpoint_every", "checkpoint_every_s", "oracle_retries",
                           "oracle_retry_wait_s", "isolate", "agent_timeout_s")  # where the agent runs: same result
#: settings added after ids were recorded, left out at the value that computes what runs before them did:
#: {"agent" | "task" | "run": {key: value}}
NEUTRAL_AT: dict[str, dict[str, Any]] = {"agent": {}, "task": {}, "run": {}}
_PKG = Path(__file__).resolve().parent
#: folders of embedded weights and oracle assets whose contents enter every protocol
ASSET_DIRS = (_PKG / "backbones" / "weights", _PKG / "tasks" / "assets")
LEGACY = "legacy"


# ---- the id ------------------------------------------------------------------------------------
def canonical(obj: Any) -> Any:
    """A JSON-able copy with sorted string keys, lists for tuples, every number a float (bools kept),
    non-finite numbers as strings and any other object as ``<TypeName>`` (never an address)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Real):  # Python and numpy ints and floats
        f = float(obj) + 0.0  # -0.0 -> 0.0
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return f"<{type(obj).__qualname__}>"


def protocol_id(inputs: dict) -> str:
    """``v<PROTOCOL_VERSION>-<12 hex digits>`` of the canonical JSON of ``inputs``."""
    text = json.dumps(canonical(inputs), sort_keys=True, separators=(",", ":"), allow_nan=False)
    version = inputs.get("protocol_version", PROTOCOL_VERSION)
    return f"v{int(version)}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def asset_hashes(dirs=None) -> dict[str, str]:
    """{path relative to the package: first 16 hex digits of its sha256} of every file under ``dirs``
    (default :data:`ASSET_DIRS`); hidden files and caches left out."""
    out = {}
    for d in (ASSET_DIRS if dirs is None else dirs):
        d = Path(d)
        for p in sorted(d.rglob("*")) if d.is_dir() else ():
            rel = p.relative_to(d)
            if not p.is_file() or any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            st = p.stat()
            key = str(p.relative_to(_PKG)) if p.is_relative_to(_PKG) else f"{d.name}/{rel}"
            out[key] = _file_sha256(str(p), st.st_size, st.st_mtime_ns)[:16]
    return out


def _neutral(settings: dict, where: str) -> dict:
    at = NEUTRAL_AT.get(where, {})
    return {k: v for k, v in settings.items() if not (k in at and canonical(v) == canonical(at[k]))}


def _version(component) -> int:
    return int(getattr(component, "protocol_version", 1))


def task_defaults(info) -> dict:
    """A TaskInfo's typed defaults as the dict the ids of recorded runs hashed (before the typed fields
    existed, ``TaskInfo.defaults`` was that dict): ``num_steps`` (``info.num_steps``), ``n_eval`` and
    ``batch_size`` (``info.run_defaults``), ``agent`` (``info.agent_defaults``) and ``consistency``
    (``info.make_consistency_model``), each key present only where its field is set (not None, a non-empty
    ``agent_defaults``). Every existing task's id is unchanged by the move to typed fields."""
    return info.defaults_dict()  # the consistency factory enters the id as its type name only


def task_settings(task, overrides: dict) -> dict:
    """The task's part of the protocol: resolved settings, noise level, optimum, design shape, defaults."""
    settings = dict(overrides or {})
    resolved = getattr(task, "cfg", None)
    if isinstance(resolved, dict):
        settings.update(resolved)
    return {"settings": _neutral(settings, "task"), "noise_std": task.noise_std,
            "optimal_value": task.optimal_value, "design_shape": list(task.info.design_shape),
            "defaults": task_defaults(task.info)}


def protocol_inputs(record: dict, task, agent_cls) -> dict:
    """The inputs of the id of a run, from its config record (``Run.config_record``: task, method, budget,
    run, round_sizes, agent, task_overrides, world_size), the task object and the agent class."""
    run = {k: v for k, v in record["run"].items()
           if k not in NON_RESULT_RUN_SETTINGS and k not in ("rounds", "round_sizes")}
    if run.get("precision") == "auto":  # what "auto" picked on this machine
        from sqdf_bbo.backbones.base import compute_dtype_for

        run["precision"] = "fp32" if compute_dtype_for("auto") is None else "bf16"
    return {
        "protocol_version": PROTOCOL_VERSION,
        "task": {"name": record["task"], "version": _version(task),
                 **task_settings(task, record.get("task_overrides", {}))},
        "method": {"name": record["method"], "version": _version(agent_cls),
                   "settings": _neutral(dict(record["agent"]), "agent")},
        "run": {"budget": record["budget"], "round_sizes": list(record["round_sizes"]),
                "world_size": record.get("world_size", 1), **_neutral(run, "run")},
        "assets": asset_hashes(),
    }


def run_protocol(record: dict, task, agent_cls) -> dict:
    """``{"protocol": id, "protocol_inputs": canonical inputs}`` for a run's config.json."""
    inputs = canonical(protocol_inputs(record, task, agent_cls))
    return {"protocol": protocol_id(inputs), "protocol_inputs": inputs}


def protocol_of(config: dict) -> str:
    """A config.json's protocol id, or ``"legacy"`` for runs recorded before ids existed."""
    return str(config.get("protocol") or LEGACY)


def task_protocol_of(config: dict) -> str:
    """The id of the part of a run's protocol that every method on its task must share (harness version,
    task, assets), from config.json's ``protocol_inputs``; ``"legacy"`` without them."""
    inputs = config.get("protocol_inputs")
    if not isinstance(inputs, dict) or not all(k in inputs for k in ("protocol_version", "task", "assets")):
        return LEGACY
    return protocol_id({k: inputs[k] for k in ("protocol_version", "task", "assets")})


# ---- the machine (recorded beside the id, not part of it) ---------------------------------------
@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what ``platform`` reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def blas_threads() -> Optional[int]:
    """Threads of the BLAS library numpy computes with (threadpoolctl; the largest if several are loaded), or
    None when none is loaded or threadpoolctl is missing. The count changes the rounding of large matrix
    products (e.g. a Fréchet distance's covariances), so a bit-for-bit re-run needs the same."""
    try:
        import numpy  # noqa: F401  (loads the BLAS library threadpoolctl inspects)
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


def machine_record() -> dict:
    """What config.json records about the machine: CPU model, torch threads and numpy's BLAS threads."""
    import torch

    return {"cpu_model": cpu_model(), "torch_threads": torch.get_num_threads(), "blas_threads": blas_threads()}


# ---- golden fingerprints -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """A small deterministic computation of one component; ``bump`` says what to bump when it moves."""

    key: str
    bump: str
    rtol: float
    compute: Callable[[], list]


_HARNESS = "PROTOCOL_VERSION in sqdf_bbo/protocol.py"


def _floats(*parts) -> list[float]:
    import torch

    out = []
    for p in parts:
        out += [float(v) for v in torch.as_tensor(p, dtype=torch.float64).reshape(-1)]
    return out


def _synthetic(name: str) -> list[float]:
    """Oracle values on 3 prior and 3 uniform designs, then noise level, naturalness and diversity."""
    import torch

    from sqdf_bbo.metrics import diversity
    from sqdf_bbo.tasks import make_task

    task = make_task(name)
    g = torch.Generator().manual_seed(0)
    u = torch.cat([task.prior.sample(3, g).double(), torch.rand(3, task.prior.dim, generator=g, dtype=torch.float64) * 2 - 1])
    x = task.lo + (u + 1) / 2 * (task.hi - task.lo)
    nat, div = task.naturalness(x), diversity(task, x)
    return _floats(task.evaluate_true(x), task.noise_std, nat["prior_logpdf"], nat["invalid_frac"], div["vendi"],
                   div["vendi_valid"], div["mean_pairwise_distance"])


def _mlp_backbone(name: str) -> list[float]:
    """Two DDIM steps (eta 1) of the pretrained MLP in float64 from fixed noise under a policy that
    scales its noise prediction by 0.9, the decoded designs and the path KL to the pretrained model."""
    import torch

    from sqdf_bbo.diffusion import DDIMSchedule, path_kl, sample_trajectory
    from sqdf_bbo.tasks import make_task

    ref = make_task(name).info.make_backbone().double()
    sched = DDIMSchedule.from_scheduler(ref.scheduler, 2, 1.0)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, *ref.latent_shape, generator=g, dtype=torch.float64)
    policy = lambda x, t, c: 0.9 * ref(x, t, c)  # noqa: E731
    with torch.no_grad():
        traj = sample_trajectory(policy, sched, x0, generator=g, record_means=True)
        return _floats(ref.decode(traj.final), path_kl(policy, ref, sched, traj))


def _unet_backbone() -> list[float]:
    """The pretrained image UNet's noise prediction in float64 on fixed inputs at two timesteps."""
    import torch

    from sqdf_bbo.tasks import make_task

    ref = make_task("aesthetic").info.make_backbone().double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, *ref.latent_shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        eps = ref(x, torch.tensor([100, 700]))
    return _floats(eps.mean(), eps.pow(2).mean(), eps.reshape(2, -1)[:, :4])


def _metrics() -> list[float]:
    """The harness's metrics on fixed inputs: curve summary (top-k, AUC), Vendi (RBF and cosine), mean
    pairwise distance, Fréchet distance."""
    import numpy as np

    from sqdf_bbo import metrics
    from sqdf_bbo.harness.evaluate import curve_summary

    rng = np.random.default_rng(3)
    cs = curve_summary(rng.normal(size=40), budget=50)
    f = rng.normal(size=(12, 5))
    a, b = rng.normal(size=(30, 3)), rng.normal(0.5, 1.5, size=(40, 3))
    return _floats([cs[k] for k in ("best_so_far", "top1", "top10", "auc_top10", "nonfinite_values")],
                   metrics.vendi_score(f, "rbf", 1.5), metrics.vendi_score(f, "cosine"),
                   metrics.valid_vendi_score(f, np.arange(12) % 3 > 0, "rbf", 1.5),
                   metrics.mean_pairwise_distance(f), metrics.frechet_distance(a, b))


def _evaluation() -> list[float]:
    """The harness's evaluation (``evaluate_policy``) of the pretrained model on levy, 16 samples."""
    import torch

    from sqdf_bbo.agents import resolve_method
    from sqdf_bbo.harness.evaluate import evaluate_policy
    from sqdf_bbo.tasks import make_task

    task = make_task("levy")
    torch.manual_seed(0)
    agent = resolve_method("pretrained")(task.info, {}, 0)
    ev, _ = evaluate_policy(agent, task, 16, torch.Generator().manual_seed(4), task.harness_reference())
    return _floats([ev[k] for k in ("eval_reward", "eval_reward_std", "path_kl", "vendi", "vendi_valid",
                                    "mean_pairwise_distance", "prior_logpdf", "invalid_frac")])


def _image_oracle() -> list[float]:
    """The aesthetic oracle, its ground-truth extra, the -manifold oracle and the diversity on 2 held-out
    patches and 2 uniform-noise images."""
    import torch

    from sqdf_bbo.data import build_patches
    from sqdf_bbo.metrics import diversity
    from sqdf_bbo.tasks import make_task

    task, man = make_task("aesthetic"), make_task("aesthetic-manifold")
    x = torch.cat([torch.as_tensor(build_patches(2, 16, "heldout", seed=3)).float(),
                   torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))])
    div = diversity(task, x)
    return _floats(task.evaluate_true(x), task.extra_values(x)["ground_truth_A"], man.evaluate_true(x),
                   div["vendi"], div["mean_pairwise_distance"], task.noise_std)


def fingerprint_specs() -> list[Fingerprint]:
    """Every golden fingerprint: float64 computations at rtol 1e-6; those through float32 networks or
    float32 timestep embeddings at 1e-4 / 1e-5."""
    from sqdf_bbo.tasks.synthetic import FUNCTIONS

    specs = [Fingerprint("harness/metrics", _HARNESS, 1e-6, _metrics),
             Fingerprint("harness/evaluation/levy/pretrained", _HARNESS, 1e-4, _evaluation)]
    for base in FUNCTIONS:
        for name in (base, f"{base}-manifold"):
            specs.append(Fingerprint(f"task/{name}", "protocol_version of SyntheticTask (sqdf_bbo/tasks/synthetic.py)"
                                     f" or {_HARNESS}", 1e-6, functools.partial(_synthetic, name)))
    specs += [Fingerprint("backbone/mlp_levy", _HARNESS, 1e-5, functools.partial(_mlp_backbone, "levy")),
              Fingerprint("backbone/mlp_ackley", _HARNESS, 1e-5, functools.partial(_mlp_backbone, "ackley")),
              Fingerprint("backbone/unet16", _HARNESS, 1e-5, _unet_backbone),
              Fingerprint("task/aesthetic", "protocol_version of the image task class (sqdf_bbo/tasks/image.py) "
                          f"or {_HARNESS}", 1e-4, _image_oracle)]
    return specs


def fingerprints(keys: Optional[list[str]] = None) -> dict[str, list[float]]:
    """{key: values} of the golden fingerprints (all, or those in ``keys``)."""
    return {s.key: s.compute() for s in fingerprint_specs() if keys is None or s.key in keys}


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m sqdf_bbo.protocol", description=__doc__.split("\n\n")[0])
    p.add_argument("--fingerprints", action="store_true", help="print the golden fingerprints (Python literal)")
    args = p.parse_args(argv)
    if args.fingerprints:
        print("GOLDEN = {")
        for k, v in fingerprints().items():
            print(f"    {k!r}: [{', '.join(repr(x) for x in v)}],")
        print("}")
    else:
        print(json.dumps({"protocol_version": PROTOCOL_VERSION, "assets": asset_hashes(), **machine_record()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
