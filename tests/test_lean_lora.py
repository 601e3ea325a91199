"""The vector tier's hand-written LoRA (sqdf_bbo/backbones/lora.py: LoraLinear) against peft, the implementation it
replaces: same initial adapters for the same seed, same forward and gradients, same merge, same runs, no peft import."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from sqdf_bbo.agents import resolve_method
from sqdf_bbo.backbones.base import Backbone
from sqdf_bbo.backbones.lora import LoraLinear, add_lora, peft_copy
from sqdf_bbo.backbones.mlp import MLPDenoiser
from sqdf_bbo.tasks import make_task


def _agent(method: str = "sqdf", **config):
    task = make_task("levy")
    cls = resolve_method(method)
    return cls(task.info, cls.resolve_config(task.info, config), seed=0)


def _with_random_adapters(policy: nn.Module, seed: int = 0) -> None:
    """Non-zero B (and perturbed A), so the LoRA branch matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_the_policy_holds_hand_written_lora_and_the_reference_none():
    agent = _agent()
    policy, reference = agent.policy, agent.reference
    names = [n for n, m in policy.named_modules() if isinstance(m, LoraLinear)]
    assert names == ["time_embed.linear_1", "time_embed.linear_2", "inp"] + [
        f"blocks.{i}.lin{j}" for i in range(4) for j in (1, 2)] + ["out"]
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.default.weight" for n in names for ab in "AB"}
    layer = policy.get_submodule("inp")
    assert layer.lora_A["default"].weight.shape == (4, policy.latent_shape[0])
    assert layer.lora_B["default"].weight.shape == (256, 4)
    assert layer.scaling["default"] == 1.0  # alpha = rank
    assert not any("lora_" in n for n, _ in reference.named_parameters())
    assert not any(p.requires_grad for p in reference.parameters())
    assert not any(type(m).__module__.startswith("peft") for m in policy.modules())


def test_same_seed_same_adapters_and_generator_state_as_peft():
    """peft's inject_adapter_in_model (the generic Backbone.add_lora) and the hand-written add_lora draw the same
    numbers in the same order: same state dict (keys, so checkpoints written under peft load, and values) and
    the same global generator state afterwards."""
    base = _agent().reference
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(123)
    ours.add_lora(4)
    after_ours = torch.rand(5)
    torch.manual_seed(123)
    Backbone.add_lora(theirs, 4)  # peft
    after_theirs = torch.rand(5)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    A = a["inp.lora_A.default.weight"]
    assert A.abs().sum() > 0 and abs(float(A.std()) - 1 / 4) < 0.15  # N(0, 1/r^2), not the kaiming draw
    assert all(not v.any() for k, v in a.items() if "lora_B" in k)
    assert torch.equal(after_ours, after_theirs)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
        [n for n, p in theirs.named_parameters() if p.requires_grad]


def test_forward_and_gradients_equal_peft_and_the_formula():
    """A two-step chain (x feeds two network calls and the update: its gradient sums >= 3 terms, whose order
    changes the rounding) through the policy and through a peft copy with the same weights: bit-equal outputs
    and gradients; and each layer equals W x + b + B A x alpha/r computed in float64."""
    policy = _agent().policy
    _with_random_adapters(policy)
    reference = peft_copy(policy)
    assert not any(isinstance(m, LoraLinear) for m in reference.modules())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, *policy.latent_shape, generator=g)
    t = torch.randint(0, 1000, (32,), generator=g)
    outs, grads = [], []
    for model in (policy, reference):
        xi = x.clone().requires_grad_(True)
        x1 = xi - 0.1 * model(xi, t)
        out = x1 - 0.1 * model(x1, t - 1) + 0.01 * xi
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in model.parameters() if p.requires_grad])
        model.zero_grad(set_to_none=True)
    assert torch.equal(outs[0], outs[1])
    assert len(grads[0]) == len(grads[1]) == 1 + 24
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    layer = policy.get_submodule("blocks.2.lin1")
    h = torch.randn(7, 256, generator=g)
    W, b, A, B = (w.double() for w in (layer.base_layer.weight, layer.base_layer.bias,
                                         layer.lora_A["default"].weight, layer.lora_B["default"].weight))
    by_hand = h.double() @ W.T + b + (h.double() @ A.T @ B.T) * (4 / 4)
    with torch.no_grad():
        assert torch.allclose(layer(h).double(), by_hand, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(layer(h), layer.base_layer(h), atol=1e-3)


def test_merge_unmerge_disable_and_the_sampling_copy_equal_peft():
    agent = _agent()
    _with_random_adapters(agent.policy)
    theirs = peft_copy(agent.policy)
    ours_layers = {n: m for n, m in agent.policy.named_modules() if isinstance(m, LoraLinear)}
    h = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    for name in ("blocks.0.lin2", "out"):
        ours, peft_layer = ours_layers[name], theirs.get_submodule(name)
        assert torch.equal(ours.get_delta_weight("default"), peft_layer.get_delta_weight("default"))
        with torch.no_grad():
            unmerged, w0 = ours(h), ours.base_layer.weight.clone()
            ours.merge(), peft_layer.merge()
            assert ours.merged and torch.equal(ours.base_layer.weight, peft_layer.base_layer.weight)
            assert torch.equal(ours(h), peft_layer(h)) and torch.allclose(ours(h), unmerged, atol=1e-5)
            ours.unmerge(), peft_layer.unmerge()
            assert not ours.merged and torch.equal(ours.base_layer.weight, peft_layer.base_layer.weight)
            assert torch.allclose(ours.base_layer.weight, w0, atol=1e-6)
            ours.enable_adapters(False), peft_layer.enable_adapters(False)
            assert torch.equal(ours(h), ours.base_layer(h)) and torch.equal(ours(h), peft_layer(h))
        assert not ours.lora_A["default"].weight.requires_grad  # as peft: off = frozen
        assert not peft_layer.lora_A["default"].weight.requires_grad
        ours.enable_adapters(True)
        assert ours.lora_B["default"].weight.requires_grad
    # the merged sampling copy (agents/online.py) equals a peft-merged copy bit for bit (a fresh agent: the
    # layers above were unmerged by subtraction, W0 only up to rounding)
    fresh = _agent()
    _with_random_adapters(fresh.policy)
    merged_peft = peft_copy(fresh.policy)
    for m in merged_peft.modules():
        if hasattr(m, "merge") and hasattr(m, "lora_A"):
            m.merge()
    plain = fresh.sampling_policy()
    assert plain is not fresh.policy and not any(isinstance(m, LoraLinear) for m in plain.modules())
    a = plain.state_dict()
    b = {k.replace(".base_layer.", "."): v for k, v in merged_peft.state_dict().items() if ".lora_" not in k}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dropout_draws_as_peft():
    """lora_dropout > 0 (not configured today): the same mask as peft's nn.Dropout for the same seed."""
    from peft import LoraConfig, inject_adapter_in_model

    net = nn.Sequential(nn.Linear(6, 5), nn.SiLU(), nn.Linear(5, 3))
    ours, theirs = copy.deepcopy(net), copy.deepcopy(net)
    torch.manual_seed(0)
    add_lora(ours, ["0", "2"], r=2, lora_alpha=4, lora_dropout=0.5)
    torch.manual_seed(0)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, lora_dropout=0.5, target_modules=["0", "2"],
                                       init_lora_weights="gaussian"), theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    with torch.no_grad():
        for p in (*ours.parameters(), *theirs.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape).sin())
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    y_ours = ours(x)
    torch.manual_seed(7)
    y_theirs = theirs(x)
    assert torch.equal(y_ours, y_theirs)
    ours.eval(), theirs.eval()
    assert torch.equal(ours(x), theirs(x)) and not torch.equal(ours(x), y_ours)  # eval: no dropout


def test_bad_targets_are_refused():
    net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    with pytest.raises(ValueError, match="no nn.Linear"):
        add_lora(copy.deepcopy(net), ["lin"], r=2, lora_alpha=2)
    with pytest.raises(TypeError, match="LayerNorm"):
        add_lora(copy.deepcopy(net), ["1"], r=2, lora_alpha=2)


def test_a_short_sqdf_run_gives_the_numbers_it_gave_under_peft(tmp_path, monkeypatch):
    """levy, budget 96: the hand-written LoRA and peft (the generic Backbone.add_lora) give the same final
    metrics and the same queries (the run is deterministic on CPU, so this holds bit for bit here)."""
    from sqdf_bbo.run import run_experiment

    kw = dict(budget=96, num_steps=8, updates_per_round=5, proxy_epochs=5, run_settings={"n_eval": 32})
    ours = run_experiment("levy", "sqdf", out=str(tmp_path / "ours"), **kw)
    monkeypatch.setattr(MLPDenoiser, "add_lora", Backbone.add_lora)
    theirs = run_experiment("levy", "sqdf", out=str(tmp_path / "peft"), **kw)
    keys = ("eval_reward", "best_so_far", "path_kl", "vendi", "vendi_valid", "n_valid")
    assert all(abs(ours[k] - theirs[k]) <= 1e-5 * max(1.0, abs(theirs[k])) for k in keys), (ours, theirs)
    assert ours["path_kl"] > 0  # the adapters trained
    q = [(tmp_path / d / "levy__sqdf__b96__s0" / "queries.csv").read_text() for d in ("ours", "peft")]
    assert q[0] == q[1]


def test_a_vector_tier_fine_tuning_run_never_imports_peft(tmp_path):
    code = ("import json, sys\nfrom sqdf_bbo.run import run_experiment\n"
            f"run_experiment('levy', 'sqdf', budget=32, out={str(tmp_path)!r}, num_steps=4, updates_per_round=2, "
            "proxy_epochs=2, run_settings={'n_eval': 8, 'rounds': 1})\n"
            "print(json.dumps({m: m in sys.modules for m in ('peft', 'transformers')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"peft": False, "transformers": False}
    assert (tmp_path / "levy__sqdf__b32__s0" / "final.json").exists()
