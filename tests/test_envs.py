"""Tests of the budgeted Gymnasium environment (sqdf_bbo/envs.py) with a cheap spy task."""
from __future__ import annotations

import json
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from sqdf_bbo.envs import BudgetedOracleEnv, BudgetExceededError, env_id, make_env, register_envs
from sqdf_bbo.tasks import RunDefaults, Task, TaskInfo, list_tasks, register_task

D = 3


class SpyTask(Task):
    """Quadratic oracle -|x - 0.5|^2 that counts every design it sees."""

    def __init__(self, noise_std: float = 0.1, dim: int = D):
        self.noise_std = noise_std
        self.calls = 0
        self.designs_seen = 0
        lo, hi = -torch.ones(dim), torch.ones(dim)
        self.info = TaskInfo(
            name="spy", tier="test", design_shape=(dim,), make_backbone=lambda: None,
            features=lambda x: x, feature_dim=dim, bounds=(lo, hi), run_defaults=RunDefaults(batch_size=4),
        )

    def evaluate_true(self, designs):
        self.calls += 1
        self.designs_seen += designs.shape[0]
        x = designs.double()
        return -((x - 0.5) ** 2).sum(dim=1)


def _env(budget=50, batch_size=4, noise_std=0.1, **kw):
    task = SpyTask(noise_std=noise_std)
    return BudgetedOracleEnv(task, budget=budget, batch_size=batch_size, **kw), task


def test_check_env_passes_without_warnings():
    env, _ = _env(budget=100)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    msgs = [str(w.message) for w in rec if "gymnasium" in str(w.filename) or "env" in str(w.message).lower()]
    assert not msgs, msgs
    assert env.action_space.shape == (4, D)
    assert env.action_space.dtype == np.float32
    np.testing.assert_array_equal(env.action_space.low, -np.ones((4, D), np.float32))
    assert np.all(np.isfinite(env.observation_space["budget_left"].high))


@pytest.fixture
def late_task():
    """Register a task after import; removed again so other tests see only the real registry."""
    from sqdf_bbo.tasks import unregister_task

    register_task("spy-late", lambda **kw: SpyTask(**kw))
    yield "spy-late"
    unregister_task("spy-late")
    gymnasium.registry.pop(env_id("spy-late"), None)


def test_gymnasium_make_via_registry_and_late_tasks(late_task):
    ids = register_envs()  # a task registered after import becomes an env
    assert env_id("spy-late") in ids
    env = gymnasium.make("sqdf_bbo/spy-late-v0", budget=20, batch_size=5, task_kwargs={"noise_std": 0.0})
    obs, _ = env.reset(seed=0)
    assert obs["budget_left"][0] == 20
    x = np.zeros((5, D), np.float32)
    _, r, term, trunc, info = env.step(x)
    assert info["queries_used"] == 5 and info["budget_left"] == 15 and not term and not trunc
    assert r == pytest.approx(-0.75)  # noise-free task: observed == true
    env2 = make_env("spy-late", budget=10, batch_size=2)
    assert env2.unwrapped.budget == 10
    with pytest.raises(ValueError, match="unknown task 'nope'.*spy-late"):
        make_env("nope", budget=10)
    for name in list_tasks():
        assert env_id(name) in gymnasium.registry


def test_registered_builtin_tasks_pass_check_env():
    from sqdf_bbo.tasks.synthetic import FUNCTIONS
    names = [n for f in FUNCTIONS for n in (f, f"{f}-manifold")]
    assert names and all(env_id(n) in gymnasium.registry for n in names)
    for name in names:
        env = gymnasium.make(env_id(name), budget=100, batch_size=4)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            check_env(env.unwrapped, skip_render_check=True)
        assert not [str(w.message) for w in rec if "gymnasium" in str(w.filename)], name
        env.reset(seed=0)
        _, r, _, _, info = env.step(env.action_space.sample())
        assert info["values"].shape == (4,) and np.isfinite(r), name


def test_budget_error_before_any_oracle_call():
    env, task = _env(budget=10, batch_size=4)
    env.reset(seed=1)
    env.step(np.zeros((4, D)))
    env.step(np.zeros((4, D)))
    assert task.calls == 2 and env.queries_used == 8
    with pytest.raises(BudgetExceededError, match="batch of 3 designs exceeds the budget left \\(2 of 10"):
        env.step(np.zeros((3, D)))
    assert task.calls == 2 and env.queries_used == 8  # nothing charged, oracle not called
    assert issubclass(BudgetExceededError, RuntimeError)
    _, _, term, _, info = env.step(np.zeros((2, D)))  # exactly what is left is fine
    assert term and info["budget_left"] == 0
    with pytest.raises(BudgetExceededError):
        env.step(np.zeros((1, D)))
    assert task.calls == 3 and task.designs_seen == 10
    env.reset()
    assert env.budget_left == 10


def test_duplicates_count_and_batch_sizes_vary():
    env, task = _env(budget=30, batch_size=4)
    env.reset(seed=0)
    x = np.full((7, D), 0.25)  # seven identical designs, not the declared batch of 4
    _, _, _, _, info = env.step(x)
    assert info["queries_used"] == 7 and task.designs_seen == 7
    env.step(x[:1])
    env.step(x[:1])  # the same design again
    assert env.queries_used == 9


@pytest.mark.parametrize(
    "bad, err, match",
    [
        (np.zeros((0, D)), ValueError, "m >= 1"),
        (np.zeros((4,)), ValueError, "got shape \\(4,\\)"),
        (np.zeros((4, D + 1)), ValueError, "got shape \\(4, 4\\)"),
        (np.full((2, D), np.nan), ValueError, "non-finite"),
        (np.array([[np.inf, 0, 0]]), ValueError, "non-finite"),
        (np.array([["a", "b", "c"]]), TypeError, "dtype"),
    ],
)
def test_malformed_actions_are_rejected_without_charge(bad, err, match):
    env, task = _env()
    env.reset(seed=0)
    with pytest.raises(err, match=match):
        env.step(bad)
    assert task.calls == 0 and env.queries_used == 0


def test_constructor_validation():
    with pytest.raises(ValueError, match="budget must be an integer >= 1, got 0"):
        _env(budget=0)
    with pytest.raises(TypeError, match="budget must be an integer"):
        _env(budget=10.5)
    with pytest.raises(ValueError, match="batch_size must be <= budget=5"):
        _env(budget=5, batch_size=6)
    with pytest.raises(ValueError, match="out_of_bounds must be one of"):
        _env(out_of_bounds="wrap")
    with pytest.raises(ValueError, match="task_kwargs"):
        BudgetedOracleEnv(SpyTask(), budget=5, task_kwargs={"noise_std": 0})
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        BudgetedOracleEnv("nope", budget=5)
    env = BudgetedOracleEnv(SpyTask(), budget=5)
    assert env.batch_size == 4  # the task's default


def test_out_of_bounds_modes():
    x = np.array([[2.0, 0.0, 0.0]])
    env, task = _env(noise_std=0.0, out_of_bounds="error")
    with pytest.raises(ValueError, match="outside the task bounds"):
        env.step(x)
    assert task.calls == 0
    env, _ = _env(noise_std=0.0, out_of_bounds="clip")
    assert env.step(x)[1] == pytest.approx(-(0.25 + 0.25 + 0.25))
    env, _ = _env(noise_std=0.0)  # allow
    assert env.step(x)[1] == pytest.approx(-(2.25 + 0.25 + 0.25))


def test_noise_uses_seed():
    x = np.random.default_rng(0).uniform(-1, 1, (6, D))
    true = -((x - 0.5) ** 2).sum(1)

    def observed(seed):
        env, _ = _env(noise_std=0.3)
        env.reset(seed=seed)
        return env.step(x)[4]["values"]

    a, b, c = observed(5), observed(5), observed(6)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, true)
    # the noise is N(0, 0.3^2): check against the env RNG's own stream
    expected = true + 0.3 * np.random.Generator(np.random.PCG64(np.random.SeedSequence(5))).normal(size=6)
    np.testing.assert_allclose(a, expected, rtol=0, atol=1e-12)
    # noise level: many draws of the same design have the task's std
    env, _ = _env(budget=4000, batch_size=4, noise_std=0.3)
    env.reset(seed=3)
    v = env.step(np.zeros((4000, D)))[4]["values"]
    assert abs(v.std() - 0.3) < 0.3 * 5 / np.sqrt(2 * 4000)
    assert abs(v.mean() - (-0.75)) < 5 * 0.3 / np.sqrt(4000)


def test_info_has_no_noise_free_values():
    env, task = _env(noise_std=0.5)
    env.reset(seed=0)
    x = np.random.default_rng(1).uniform(-1, 1, (4, D))
    obs, r, _, _, info = env.step(x)
    assert set(info) == {"values", "queries_used", "budget_left"}
    true = task.evaluate_true(torch.as_tensor(x)).numpy()
    assert info["values"].dtype == np.float64 and info["values"].shape == (4,)
    assert not np.allclose(info["values"], true)
    assert r == pytest.approx(float(info["values"].mean()))
    for v in list(info.values()) + list(obs.values()):
        arr = np.atleast_1d(np.asarray(v, dtype=np.float64))
        assert not any(np.isclose(arr, t).any() for t in true)
    assert not any(isinstance(v, Task) for v in vars(env).values() if v is not env._task)


def test_torch_and_float32_actions_keep_dtype():
    seen = []

    class DtypeSpy(SpyTask):
        def evaluate_true(self, designs):
            seen.append(designs.dtype)
            return super().evaluate_true(designs)

    env = BudgetedOracleEnv(DtypeSpy(), budget=10, batch_size=2)
    env.step(torch.zeros(2, D, dtype=torch.float32, requires_grad=True))
    env.step(np.zeros((2, D), np.float64))
    assert seen == [torch.float32, torch.float64]


def test_get_state_set_state_round_trip():
    env, _ = _env(budget=40, noise_std=1.0)
    env.reset(seed=11)
    x = np.zeros((4, D))
    env.step(x)
    state = json.loads(json.dumps(env.get_state()))  # survives a JSON checkpoint
    cont = [env.step(x)[4]["values"] for _ in range(3)]
    env2, _ = _env(budget=40, noise_std=1.0)
    env2.reset(seed=999)
    env2.set_state(state)
    assert env2.queries_used == 4
    resumed = [env2.step(x)[4]["values"] for _ in range(3)]
    for a, b in zip(cont, resumed):
        np.testing.assert_array_equal(a, b)
    assert env2.queries_used == env.queries_used == 16
    other, _ = _env(budget=41)
    with pytest.raises(ValueError, match="budget 40"):
        other.set_state(state)
    with pytest.raises(KeyError, match="rng_state"):
        env2.set_state({k: v for k, v in state.items() if k != "rng_state"})


@settings(max_examples=200, deadline=None)
@given(
    budget=st.integers(1, 60),
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=30),
    seed=st.integers(0, 2**31 - 1),
)
def test_budget_property(budget, sizes, seed):
    env, task = _env(budget=budget, batch_size=1, noise_std=0.1)
    env.reset(seed=seed)
    used = 0
    for m in sizes:
        x = np.zeros((m, D), np.float32)
        calls_before = task.calls
        if used + m > budget:
            with pytest.raises(BudgetExceededError):
                env.step(x)
            assert task.calls == calls_before
        else:
            _, r, term, trunc, info = env.step(x)
            used += m
            assert task.calls == calls_before + 1
            assert info["values"].shape == (m,) and np.isfinite(r)
            assert term == (used == budget) and trunc is False
        assert env.queries_used == used == task.designs_seen <= budget
        assert env.budget_left == budget - used
