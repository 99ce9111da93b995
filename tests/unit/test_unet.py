"""The latent video U-Net: shapes for every variant, conditioning, attention locality, checkpointing, presets."""

from __future__ import annotations

import time

import pytest
import torch

from vqvdm_scale.config.core import ConfigError
from vqvdm_scale.models.unet.config import UNetConfig
from vqvdm_scale.models.unet.model import SpatialAttention, TemporalAttention, UNet3D, count_parameters
from vqvdm_scale.models.unet.presets import UNET_PRESETS, unet_preset

X_SHAPE = (2, 4, 4, 8, 8)  # [B, C, t, h, w]


def _perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Move every parameter off its (partly zero) init so all paths reach the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("block_type", ["3d", "factorized"])
@pytest.mark.parametrize("temporal_pos", ["rel_bias", "rope"])
@pytest.mark.parametrize("context_frames", [False, True])
def test_output_shapes(block_type: str, temporal_pos: str, context_frames: bool) -> None:
    torch.manual_seed(0)
    cfg = unet_preset("tiny", block_type=block_type, temporal_pos=temporal_pos, context_frames=context_frames)
    net = UNet3D(cfg)
    x = torch.randn(X_SHAPE)
    t = torch.tensor([0, 999])
    out = net(x, t)
    assert out.shape == X_SHAPE
    assert torch.count_nonzero(out) == 0, "zero-initialised output conv: the untrained net predicts 0"
    _perturb(net)
    kwargs = {"context": torch.randn(X_SHAPE)} if context_frames else {}
    out = net(x, t, **kwargs)
    assert out.shape == X_SHAPE and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_half_precision_module() -> None:
    """DeepSpeed bf16 casts the whole module (no autocast): every embedding must follow the weights' dtype."""
    net = UNet3D(unet_preset("tiny", num_classes=2, use_fps=True, context_frames=True)).to(torch.bfloat16)
    x = torch.randn(X_SHAPE, dtype=torch.bfloat16)
    out = net(x, torch.tensor([1, 900]), y=torch.tensor([0, 2]), fps=torch.tensor([8.0, 30.0]), context=x)
    assert out.dtype == torch.bfloat16 and out.shape == X_SHAPE


def test_first_conv_width_and_out_channels() -> None:
    cfg = unet_preset("tiny", context_frames=True, out_channels=3)
    assert cfg.input_channels == 2 * 4 + 1
    net = UNet3D(cfg)
    assert net(torch.randn(X_SHAPE), torch.tensor([5, 6])).shape == (2, 3, 4, 8, 8)


def test_downsample_time_and_float_timesteps() -> None:
    net = UNet3D(unet_preset("tiny", downsample_time=True))
    _perturb(net)
    x = torch.randn(X_SHAPE)
    out_long = net(x, torch.tensor([10, 20]))
    out_float = net(x, torch.tensor([10.0, 20.0]))
    assert out_long.shape == X_SHAPE
    torch.testing.assert_close(out_long, out_float)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(2, 4, 3, 8, 8), torch.tensor([1, 2]))


def test_class_and_fps_conditioning() -> None:
    torch.manual_seed(0)
    net = UNet3D(unet_preset("tiny", num_classes=3, use_fps=True)).eval()
    assert net.class_emb is not None and net.class_emb.num_embeddings == 4  # + the null class
    _perturb(net)
    x, t = torch.randn(X_SHAPE), torch.tensor([100, 100])
    fps = torch.tensor([8.0, 8.0])
    base = net(x, t, y=torch.tensor([0, 0]), fps=fps)
    other_class = net(x, t, y=torch.tensor([1, 1]), fps=fps)
    null = net(x, t, y=torch.tensor([3, 3]), fps=fps)  # the null class index is valid
    no_label = net(x, t, y=None, fps=fps)
    other_fps = net(x, t, y=torch.tensor([0, 0]), fps=torch.tensor([24.0, 24.0]))
    assert not torch.allclose(base, other_class, atol=1e-4)
    assert not torch.allclose(base, null, atol=1e-4)
    assert not torch.allclose(base, other_fps, atol=1e-4)
    torch.testing.assert_close(no_label, null)  # no label = unconditional branch
    with pytest.raises(ValueError, match="fps"):
        net(x, t, y=torch.tensor([0, 0]))


def test_unconditional_net_ignores_labels_and_fps() -> None:
    net = UNet3D(unet_preset("tiny"))
    _perturb(net)
    x, t = torch.randn(X_SHAPE), torch.tensor([3, 4])
    torch.testing.assert_close(net(x, t), net(x, t, y=torch.tensor([1, 2]), fps=torch.tensor([8.0, 8.0])))


def test_context_frames() -> None:
    net = UNet3D(unet_preset("tiny", context_frames=True))
    _perturb(net)
    x, t = torch.randn(X_SHAPE), torch.tensor([50, 50])
    ctx = torch.randn(X_SHAPE)
    dropped = net(x, t)
    zeros = net(x, t, context=torch.zeros(X_SHAPE), context_mask=torch.zeros(2, 1, 4, 8, 8))
    torch.testing.assert_close(dropped, zeros)
    with_ctx = net(x, t, context=ctx)
    assert not torch.allclose(with_ctx, dropped, atol=1e-4)
    ones = net(x, t, context=ctx, context_mask=torch.ones(2, 1, 4, 8, 8))
    torch.testing.assert_close(with_ctx, ones)  # a given context without mask means "all known"
    # Masked-out frames of the context are invisible: changing them changes nothing.
    mask = torch.zeros(2, 1, 4, 8, 8)
    mask[:, :, :2] = 1
    ctx2 = ctx.clone()
    ctx2[:, :, 2:] += 5.0
    torch.testing.assert_close(
        net(x, t, context=ctx, context_mask=mask), net(x, t, context=ctx2, context_mask=mask)
    )
    with pytest.raises(ValueError, match="context_mask"):
        net(x, t, context=ctx, context_mask=torch.ones(2, 4, 4, 8, 8))
    plain = UNet3D(unet_preset("tiny"))
    with pytest.raises(ValueError, match="context_frames"):
        plain(x, t, context=ctx)


@pytest.mark.parametrize("temporal_pos", ["rel_bias", "rope"])
def test_attention_locality(temporal_pos: str) -> None:
    """Temporal attention mixes frames only at the same pixel; spatial attention mixes pixels only within a frame."""
    torch.manual_seed(0)
    temporal = TemporalAttention(32, 16, temporal_pos)
    spatial = SpatialAttention(32, 16)
    _perturb(temporal, 0.2)
    _perturb(spatial, 0.2)
    # GroupNorm pools statistics over the whole clip; bypass it to see the attention's own reach.
    temporal.norm = torch.nn.Identity()  # type: ignore[assignment]
    spatial.norm = torch.nn.Identity()  # type: ignore[assignment]
    emb = torch.zeros(1, 8)
    x = torch.randn(1, 32, 4, 4, 4)
    x2 = x.clone()
    x2[:, :, 0, 1, 1] += 3.0  # change one pixel of frame 0
    dt = (temporal(x2, emb) - temporal(x, emb)).abs().sum(1)[0]  # [t, h, w]
    assert dt[3, 1, 1] > 1e-3  # the last frame at that pixel sees it
    assert dt[:, 0, 0].max() == 0 and dt[1:, 2, 3].max() == 0  # other pixels do not
    ds = (spatial(x2, emb) - spatial(x, emb)).abs().sum(1)[0]
    assert ds[0, 3, 3] > 1e-3  # another pixel of frame 0 sees it
    assert ds[1:].max() == 0  # other frames do not


def test_temporal_position_encodings_break_permutation_symmetry() -> None:
    """Without positions, temporal attention commutes with permuting frames; rel-bias and RoPE must not."""
    torch.manual_seed(0)
    emb = torch.zeros(1, 8)
    x = torch.randn(1, 32, 4, 2, 2)
    perm = torch.tensor([2, 0, 3, 1])
    for pos in ("rel_bias", "rope"):
        attn = TemporalAttention(32, 16, pos)
        _perturb(attn, 0.3)
        a = attn(x, emb)[:, :, perm]
        b = attn(x[:, :, perm], emb)
        assert not torch.allclose(a, b, atol=1e-4), pos


def test_activation_checkpointing_same_output_and_grads() -> None:
    torch.manual_seed(0)
    cfg = unet_preset("tiny", num_classes=2, use_fps=True, block_type="factorized")
    ref = UNet3D(cfg)
    _perturb(ref)
    ckpt = UNet3D(
        unet_preset("tiny", num_classes=2, use_fps=True, block_type="factorized", checkpoint_activations=True)
    )
    ckpt.load_state_dict(ref.state_dict())
    x, t = torch.randn(X_SHAPE), torch.tensor([7, 700])
    kw = {"y": torch.tensor([0, 2]), "fps": torch.tensor([10.0, 30.0])}
    out_ref, out_ckpt = ref(x, t, **kw), ckpt(x, t, **kw)
    torch.testing.assert_close(out_ref, out_ckpt)
    out_ref.square().sum().backward()
    out_ckpt.square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="attention_resolutions"):
        UNetConfig(channel_mult=(1, 2), attention_resolutions=(4,))
    with pytest.raises(ConfigError, match="head_dim"):
        UNetConfig(model_channels=48, channel_mult=(1, 2), attention_resolutions=(2,), head_dim=64)
    with pytest.raises(ConfigError, match="even"):
        UNetConfig(
            model_channels=33, channel_mult=(1,), attention_resolutions=(), head_dim=33, temporal_pos="rope"
        )
    with pytest.raises(ConfigError, match="num_classes"):
        UNetConfig(num_classes=-1)
    with pytest.raises(ConfigError, match="tiny"):
        unet_preset("XXL")
    with pytest.raises(ConfigError, match="model_chanels"):
        unet_preset("tiny", model_chanels=8)


def test_presets_build_and_sizes() -> None:
    assert set(UNET_PRESETS) == {"tiny", "S", "B", "L"}
    for cfg in UNET_PRESETS.values():
        assert isinstance(cfg, UNetConfig)
    start = time.perf_counter()
    s = UNet3D(unet_preset("S", in_channels=8, num_classes=101, use_fps=True))
    n_s = count_parameters(s)
    assert 30e6 < n_s < 60e6, n_s
    assert time.perf_counter() - start < 30
    with torch.device("meta"):  # size only, no memory: B's count without allocating it
        n_b = count_parameters(UNet3D(unet_preset("B")))
    assert 100e6 < n_b < 200e6, n_b
    assert count_parameters(UNet3D(unet_preset("tiny"))) < 3e6
