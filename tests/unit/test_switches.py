"""The speed switches on a tiny U-Net, without DeepSpeed: activation checkpointing and channels_last."""

from __future__ import annotations

from typing import Any

import torch

from vqvdm_scale.engine.switches import channels_last_convs
from vqvdm_scale.models.unet.blocks import ResBlock
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.models.unet.presets import unet_preset


def _net(**overrides: Any) -> UNet3D:
    torch.manual_seed(0)
    net = UNet3D(unet_preset("tiny", in_channels=4, model_channels=8, head_dim=8, **overrides))
    with torch.no_grad():  # the zero-initialised output conv would make every gradient but its own zero
        net.out_conv.weight.normal_(0, 0.1)
    return net


def _step(net: UNet3D) -> tuple[int, int, dict[str, torch.Tensor]]:
    """ResBlock forwards in the forward pass and in all, and the gradients, of one loss.backward()."""
    calls = [0]
    for m in net.modules():
        if isinstance(m, ResBlock):
            forward = m.forward

            def counted(*args: Any, _f: Any = forward) -> Any:
                calls[0] += 1
                return _f(*args)

            m.forward = counted  # type: ignore[method-assign]
    x = torch.randn(2, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    out = net(x, torch.tensor([10, 500]))
    in_forward = calls[0]
    out.pow(2).mean().backward()
    return in_forward, calls[0], {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_checkpointing_recomputes_each_block_in_backward_with_the_same_gradients() -> None:
    fwd, total, grads = _step(_net())
    fwd_ck, total_ck, grads_ck = _step(_net(checkpoint_activations=True))
    assert fwd == fwd_ck == total > 0  # off: each block runs once
    assert total_ck == 2 * fwd_ck  # on: each block runs again when backward needs its activations
    assert grads.keys() == grads_ck.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_ck[name], g, msg=name)


def test_channels_last_feeds_every_conv_channels_last_and_changes_no_output() -> None:
    x = torch.randn(2, 4, 2, 4, 4)
    t = torch.tensor([10, 500])
    net = _net()
    ref = net(x, t)
    assert channels_last_convs(net) == sum(isinstance(m, torch.nn.Conv3d) for m in net.modules())
    seen: list[bool] = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_hook(
                lambda mod, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last_3d))
            )
    out = net(x, t)
    assert seen and all(seen)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
