"""Replay buffer: sampling frequencies vs the sampling formulas of docs/methods/sqdf.md, ring capacity, disk mode, errors."""
import numpy as np
import pytest
import torch
from scipy.stats import binom, chisquare

from sqdf_bbo.buffer import TrajectoryBuffer

N = 50


def _filled(m=20, rewards=None, tags=None, capacity=64, **kw):
    b = TrajectoryBuffer(capacity, N, (3,), **kw)
    g = torch.Generator().manual_seed(0)
    rewards = torch.linspace(-1, 2, m) if rewards is None else torch.as_tensor(rewards, dtype=torch.float64)
    tags = [0] * m if tags is None else tags
    for i in range(m):
        b.add(torch.randn(1, N, 3, generator=g), rewards[i:i + 1], tag=tags[i])
    return b


def test_random_uniform_distinct_and_uniform_steps():
    b = _filled(m=20)
    g = torch.Generator().manual_seed(1)
    counts_j, counts_k = np.zeros(20), np.zeros(N)
    for _ in range(2000):
        slots, steps, probs = b.sample(5, "random", g)
        assert probs is None and len(set(slots.tolist())) == 5  # distinct trajectories
        counts_j += np.bincount(slots.numpy(), minlength=20)
        counts_k += np.bincount(steps.numpy(), minlength=N)
    assert chisquare(counts_j).pvalue > 1e-3
    assert chisquare(counts_k).pvalue > 1e-3


def test_on_policy_reward_and_mixed():
    tags = [0] * 8 + [1] * 6 + [2] * 3 + [3] * 3
    b = _filled(m=20, tags=tags)
    g = torch.Generator().manual_seed(2)
    slots, _, _ = b.sample(5, "on-policy", g)
    # the 3 of tag 3 (slots 17-19) then the newest two of tag 2 (slots 16, 15)
    assert set(slots.tolist()) == {19, 18, 17, 16, 15}
    slots, _, _ = b.sample(4, "reward", g)
    assert set(slots.tolist()) == {19, 18, 17, 16}  # rewards increase with slot
    counts = np.zeros(20)
    for _ in range(3000):
        slots, _, _ = b.sample(5, "on-policy+random", g)
        s = set(slots.tolist())
        assert len(s) == 5 and {17, 18, 19} <= s  # every newest-tag trajectory, topped up
        counts += np.bincount(slots.numpy(), minlength=20)
    # the 2 top-up draws are uniform over the other 17 trajectories
    assert chisquare(counts[:17]).pvalue > 1e-3
    assert counts[:17].sum() == 2 * 3000
    # newest tag larger than n: a random n of them
    b2 = _filled(m=10, tags=[5] * 10)
    slots, _, _ = b2.sample(4, "on-policy+random", g)
    assert len(set(slots.tolist())) == 4


def test_per_joint_frequencies_match_formula():
    rewards = [-1.0, 0.0, 0.5, 1.0, 2.0, 3.0]
    gamma = 0.8
    b = _filled(m=6, rewards=rewards)
    g = torch.Generator().manual_seed(3)
    draws = 200_000
    slots, steps, probs = b.sample(draws, "reward+gamma_PER", g, gamma=gamma)
    r = np.maximum(np.array(rewards), 0)
    w = r[:, None] * gamma ** (N - 1 - np.arange(N))[None, :]
    P = w / w.sum()
    np.testing.assert_allclose(probs.numpy(), P[slots.numpy(), steps.numpy()], rtol=1e-12)
    counts = np.zeros((6, N))
    np.add.at(counts, (slots.numpy(), steps.numpy()), 1)
    assert counts[:2].sum() == 0  # non-positive rewards are never drawn
    cells = (P * draws) >= 5  # chi-square on cells with enough expected mass, the rest pooled
    obs = np.append(counts[cells], counts[~cells].sum())
    exp = np.append(P[cells] * draws, P[~cells].sum() * draws)
    assert chisquare(obs, exp).pvalue > 1e-3
    # with replacement: repeated pairs happen
    assert len(set(zip(slots.tolist(), steps.tolist()))) < draws


def test_per_step_marginal_spec_fixture():
    b = _filled(m=4, rewards=[1.0, 2.0, 3.0, 4.0])
    P = b.per_probabilities(0.9).sum(0).numpy()  # marginal over k
    assert P[49] == pytest.approx(0.1005, abs=5e-5)
    assert P[40:].sum() == pytest.approx(0.655, abs=5e-4)
    assert P[0] == pytest.approx(0.00058, abs=5e-6)
    g = torch.Generator().manual_seed(4)
    n = 20_000
    _, steps, _ = b.sample(n, "reward+gamma_PER", g, gamma=0.9)
    hits = int((steps == 49).sum())
    lo, hi = binom.ppf(1e-4, n, P[49]), binom.ppf(1 - 1e-4, n, P[49])
    assert lo <= hits <= hi


def test_all_nonpositive_rewards_error_or_fallback():
    b = _filled(m=5, rewards=[-1.0, 0.0, -2.0, -0.5, 0.0])
    with pytest.raises(ValueError, match="reward > 0"):
        b.sample(4, "reward+gamma_PER", gamma=0.9)
    fb = _filled(m=5, rewards=[-1.0, 0.0, -2.0, -0.5, 0.0], per_fallback="uniform")
    slots, steps, probs = fb.sample(50_000, "reward+gamma_PER", torch.Generator().manual_seed(5), gamma=0.9)
    assert torch.isfinite(probs).all() and fb.per_fallbacks == 1
    assert chisquare(np.bincount(slots.numpy(), minlength=5)).pvalue > 1e-3  # uniform over trajectories
    pk = 0.9 ** (N - 1 - np.arange(N))
    assert probs[0].item() == pytest.approx(pk[steps[0].item()] / (5 * pk.sum()))


def test_ring_capacity_and_reset():
    b = TrajectoryBuffer(4, N, (2,))
    for i in range(6):
        b.add(torch.full((1, N, 2), float(i)), torch.tensor([float(i)]), tag=i)
    assert len(b) == 4
    assert sorted(b.rewards.tolist()) == [2.0, 3.0, 4.0, 5.0]  # the two oldest were overwritten
    z, _ = b.get(torch.tensor([0, 1]), torch.tensor([0, 7]))
    assert z[:, 0].tolist() == [4.0, 5.0]  # slots 0, 1 now hold insertions 4, 5
    b.reset()
    assert len(b) == 0
    with pytest.raises(ValueError, match="empty"):
        b.sample(1, "random")


def test_disk_mode_matches_memory(tmp_path):
    g = torch.Generator().manual_seed(6)
    states = torch.randn(5, N, 3, generator=g)
    mem = TrajectoryBuffer(8, N, (3,))
    disk = TrajectoryBuffer(8, N, (3,), storage="disk", directory=tmp_path / "buf")
    for b in (mem, disk):
        b.add(states, torch.arange(5.0), tag=0, conds=["a", "b", "c", "d", "e"])
    assert len(list((tmp_path / "buf").glob("traj_*.pt"))) == 5  # one file per trajectory
    slots, steps = torch.tensor([4, 0, 2]), torch.tensor([49, 0, 13])
    zm, cm = mem.get(slots, steps)
    zd, cd = disk.get(slots, steps)
    torch.testing.assert_close(zm, zd)
    torch.testing.assert_close(zm, states[slots, steps])
    assert cm == cd == ["e", "a", "c"]


def test_errors_name_values():
    b = _filled(m=3)
    with pytest.raises(ValueError, match="fewer than the 5"):
        b.sample(5, "random")
    with pytest.raises(ValueError, match="allowed"):
        b.sample(1, "recent")
    with pytest.raises(ValueError, match="shape"):
        b.add(torch.zeros(1, N - 1, 3), torch.zeros(1), tag=0)
    with pytest.raises(ValueError, match="capacity"):
        TrajectoryBuffer(0, N, (3,))


def test_per_priority_shift_min_and_clamp_against_hand_computed_buffer():
    """N = 2 steps, γ = 0.5, rewards (-1, 0, 2); step factor γ^{N-1-k} = (0.5, 1) for k = (0, 1).
    shift_min: w = r - min r = (0, 1, 3) -> weights (0 0 | .5 1 | 1.5 3), total 6.
    clamp:     w = max(r, 0) = (0, 0, 2) -> weights (0 0 | 0 0 | 1 2), total 3."""
    for priority, expected in (("shift_min", [[0, 0], [1 / 12, 1 / 6], [1 / 4, 1 / 2]]),
                               ("clamp", [[0, 0], [0, 0], [1 / 3, 2 / 3]])):
        buf = TrajectoryBuffer(8, 2, (1,), per_priority=priority)
        buf.add(torch.zeros(3, 2, 1), torch.tensor([-1.0, 0.0, 2.0]), tag=0)
        torch.testing.assert_close(buf.per_probabilities(0.5), torch.tensor(expected, dtype=torch.float64))
    # all rewards equal: shift_min is uniform over trajectories, (0.5, 1)/4.5 per row
    buf = TrajectoryBuffer(8, 2, (1,), per_priority="shift_min")
    buf.add(torch.zeros(3, 2, 1), torch.full((3,), -4.0), tag=0)
    torch.testing.assert_close(buf.per_probabilities(0.5), torch.tensor([[1 / 9, 2 / 9]] * 3, dtype=torch.float64))
    assert buf.per_fallbacks == 0
    with pytest.raises(ValueError, match="per_priority must be one of"):
        TrajectoryBuffer(8, 2, (1,), per_priority="rank")


def test_per_shift_min_is_near_uniform_on_standardised_rewards():
    """On 1024 standard-normal rewards the clamp rule gives ~half the buffer probability 0 and the top
    10 % about a third of the mass; shift_min gives every trajectory but the minimum mass, top 10 % < 20 %."""
    r = torch.randn(1024, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    top = torch.argsort(r, descending=True)[:102]
    mass = {}
    for priority in ("clamp", "shift_min"):
        buf = TrajectoryBuffer(1024, 5, (1,), per_priority=priority)
        buf.add(torch.zeros(1024, 5, 1), r, tag=0)
        p_traj = buf.per_probabilities(0.9).sum(1)
        mass[priority] = (float(p_traj[top].sum()), int((p_traj == 0).sum()))
    assert mass["clamp"][0] > 0.3 and mass["clamp"][1] > 400
    assert mass["shift_min"][0] < 0.2 and mass["shift_min"][1] == 1
