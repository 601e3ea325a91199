"""The lean forward of peft's LoRA layers (sqdf_bbo/backbones/lora.py; the image tier's UNet) computes what peft's
forward computes, bit for bit. The vector tier's hand-written LoRA: tests/test_lean_lora.py."""
import torch
from peft.tuners.lora import layer as peft_lora

from sqdf_bbo.agents import resolve_method
from sqdf_bbo.backbones.lora import LeanConv2d, LeanLinear, peft_forward_copy
from sqdf_bbo.tasks import make_task


def test_lean_lora_forward_and_gradients_equal_peft_bit_for_bit():
    task = make_task("aesthetic")  # the UNet: LoRA on convolutions and on the time projections (Linear)
    agent = resolve_method("sqdf")(task.info, {}, 0)
    policy = agent.policy
    layers = [m for m in policy.modules() if isinstance(m, peft_lora.LoraLayer)]
    assert layers and all(type(m) in (LeanLinear, LeanConv2d) for m in layers)
    assert {type(m) for m in layers} == {LeanLinear, LeanConv2d}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero B, so the LoRA branch matters
        for p in agent.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    reference = peft_forward_copy(policy)  # the independent implementation: peft's forward
    assert not any(type(m) in (LeanLinear, LeanConv2d) for m in reference.modules())
    x = torch.randn(4, *policy.latent_shape, generator=g)
    t = torch.tensor([3, 250, 600, 900])
    outs, grads = [], []
    for model in (policy, reference):
        # a two-step chain, as the reward-backprop methods run it: x feeds both network calls and the update,
        # so its gradient sums >= 3 terms, whose order (autograd's node order) changes the rounding
        xi = x.clone().requires_grad_(True)
        x1 = xi - 0.1 * model(xi, t)
        out = x1 - 0.1 * model(x1, t - 1) + 0.01 * xi
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in model.parameters() if p.requires_grad])
        model.zero_grad(set_to_none=True)
    assert torch.equal(outs[0], outs[1])
    assert len(grads[0]) == len(grads[1]) > 1
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_lean_lora_defers_to_peft_when_merged_or_disabled():
    task = make_task("aesthetic")
    agent = resolve_method("sqdf")(task.info, {}, 0)
    layer = next(m for m in agent.policy.modules() if isinstance(m, LeanLinear))
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    x = torch.randn(5, layer.in_features)
    with torch.no_grad():
        lean = layer(x)
        base = layer.get_base_layer()(x)
        assert not torch.allclose(lean, base)  # the adapter changes the output
        layer.enable_adapters(False)  # peft's path: the base layer alone
        assert torch.equal(layer(x), base)
        layer.enable_adapters(True)
        layer.merge()  # peft's path: merged weights, close to (not bit-equal with) the unmerged sum
        assert torch.allclose(layer(x), lean, atol=1e-5)
        layer.unmerge()
        assert torch.allclose(layer(x), lean, atol=1e-5)
