"""VQGAN objectives: GAN terms on known logits, adaptive weight, LPIPS weight loading, the combined loss.

LPIPS' VGG16 ImageNet weights cannot be downloaded here, so these tests use a randomly initialised
VGG16 trunk (``lpips_random_init=True``) or a random torchvision VGG16 state dict saved to a temp file;
they check wiring, weight loading and gradients, not perceptual quality.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vqvdm_scale.config import ConfigError, from_dict
from vqvdm_scale.losses import (
    LPIPSWeightsNotFound,
    PerceptualLoss,
    VQGANLoss,
    VQGANLossConfig,
    adaptive_weight,
    d_loss,
    feature_matching_loss,
    g_loss,
    reconstruction_loss,
)
from vqvdm_scale.losses.perceptual import load_vgg16_into_lpips, resolve_vgg16_weights
from vqvdm_scale.models.tokenizer import DiscriminatorConfig, Discriminators, TokenizerConfig, VQTokenizer


@pytest.fixture(scope="module")
def empty_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """TORCH_HOME pointing at an empty directory, so no cached VGG16 file can be picked up."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def loss_fn(empty_torch_home: Path) -> VQGANLoss:
    """The combined loss with a randomly initialised LPIPS VGG16 trunk (no pretrained weights here)."""
    cfg = VQGANLossConfig(
        perceptual_weight=1.0,
        perceptual_frames=2,
        lpips_random_init=True,
        gan_weight=0.5,
        disc_start_step=10,
        feature_match_weight=1.0,
    )
    return VQGANLoss(cfg)


def test_gan_losses_on_known_logits() -> None:
    real, fake = torch.tensor([2.0, 2.0]), torch.tensor([-1.0])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731 - softplus
    assert math.isclose(d_loss(real, fake, "bce").item(), 0.5 * (sp(-2.0) + sp(-1.0)), rel_tol=1e-6)
    assert math.isclose(g_loss(fake, "bce").item(), sp(1.0), rel_tol=1e-6)
    assert d_loss(real, fake, "hinge").item() == 0.0  # both beyond the margin
    half = torch.tensor([0.5])
    assert math.isclose(d_loss(half, half, "hinge").item(), 0.5 * (0.5 + 1.5))
    assert g_loss(fake, "hinge").item() == 1.0
    with pytest.raises(ValueError, match="bce"):
        d_loss(real, fake, "wgan")  # type: ignore[arg-type]


def test_reconstruction_and_feature_matching() -> None:
    x = torch.zeros(1, 3, 2, 4, 4)
    y = torch.full_like(x, 0.5)
    assert reconstruction_loss(x, y, "mse").item() == 0.25
    assert reconstruction_loss(x, y, "l1").item() == 0.5
    with pytest.raises(ValueError):
        reconstruction_loss(x, y[:, :, :1])
    feats = [torch.randn(2, 4, 3, 3), torch.randn(2, 8, 2, 2)]
    assert feature_matching_loss(feats, [f.clone() for f in feats]).item() == 0.0
    real = [f.clone().requires_grad_(True) for f in feats]
    fake = [(f + 1.0).requires_grad_(True) for f in feats]
    fm = feature_matching_loss(real, fake)
    assert math.isclose(fm.item(), 1.0, rel_tol=1e-6)
    fm.backward()
    assert real[0].grad is None and fake[0].grad is not None  # real features are detached
    # squared (VQ-VDM): the mean squared difference, so a gap of 2 costs 4 where L1 says 2
    far = [f + 2.0 for f in feats]
    assert math.isclose(feature_matching_loss(feats, far, "squared").item(), 4.0, rel_tol=1e-6)
    assert math.isclose(feature_matching_loss(feats, far, "l1").item(), 2.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="'l1' or 'squared'"):
        feature_matching_loss(feats, far, "l2")  # type: ignore[arg-type]


def test_adaptive_weight_value_and_fallbacks() -> None:
    w = torch.nn.Parameter(torch.ones(3))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    nll, g = (w * a).sum(), (w * b).sum()
    weight = adaptive_weight(nll, g, w)
    assert math.isclose(weight.item(), 5.0 / (1.0 + 1e-4), rel_tol=1e-5)
    assert not weight.requires_grad
    assert adaptive_weight(nll, g, w, max_weight=2.0).item() == 2.0
    # last layer not in the graph (as with ZeRO-3's partitioned parameters): falls back to 1
    unused = torch.nn.Parameter(torch.ones(3))
    assert adaptive_weight(nll, g, unused).item() == 1.0
    assert adaptive_weight(nll, g, torch.nn.Parameter(torch.empty(0))).item() == 1.0
    assert adaptive_weight(nll.detach(), g, w).item() == 1.0


def test_missing_lpips_weights_say_where_to_put_them(empty_torch_home: Path) -> None:
    with pytest.raises(LPIPSWeightsNotFound) as err:
        PerceptualLoss(num_frames=2)
    msg = str(err.value)
    assert str(empty_torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth") in msg
    assert "lpips_weights" in msg and "perceptual_weight=0" in msg and "lpips_random_init" in msg
    assert isinstance(err.value, ValueError)
    with pytest.raises(LPIPSWeightsNotFound, match="does not exist"):
        PerceptualLoss(lpips_weights=str(empty_torch_home / "nope.pth"))
    # the combined loss only needs the weights when the perceptual term is on
    assert VQGANLoss(VQGANLossConfig(perceptual_weight=0.0)).perceptual is None


def test_perceptual_loss_loads_a_vgg16_state_dict(tmp_path: Path, empty_torch_home: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None)
    # Only the conv trunk is saved to keep the temp file small (the classifier is ~500 MB and is
    # ignored by the loader); the keys are torchvision's own `features.N.weight` names.
    state = {k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    loss = PerceptualLoss(num_frames=2, lpips_weights=str(path))
    trunk = loss.lpips.net
    assert torch.equal(trunk.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(trunk.slice5, "28").bias, state["features.28.bias"])
    assert loss.weights_path == str(path)
    # the hub-cache location is found without an explicit path
    cached = empty_torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    try:
        cached.symlink_to(path)
        assert resolve_vgg16_weights(None, random_init=False) == cached
        assert resolve_vgg16_weights(str(path), random_init=False) == path  # an explicit path wins
    finally:
        cached.unlink()
    torch.save({"features.0.weight": state["features.0.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing"):
        load_vgg16_into_lpips(loss.lpips, tmp_path / "partial.pth")


def test_perceptual_loss_is_frozen_and_measures_difference(loss_fn: VQGANLoss) -> None:
    perceptual = loss_fn.perceptual
    assert perceptual is not None and perceptual.weights_path is None  # random trunk, as asked
    perceptual.train()
    assert not perceptual.lpips.training
    assert not any(p.requires_grad for p in perceptual.parameters())
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    assert perceptual(x, x).abs().item() < 1e-6
    x_rec = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    d = perceptual(x, x_rec)
    d.backward()
    assert d.item() > 0 and x_rec.grad is not None and x_rec.grad.abs().sum() > 0
    gray = x[:, :1]
    assert perceptual(gray, gray.flip(-1)).item() > 0


def _tiny_models() -> tuple[VQTokenizer, Discriminators]:
    tok = VQTokenizer(
        TokenizerConfig(
            base_channels=8,
            channel_mult=(1, 2),
            num_res_blocks=1,
            downsample=(2, 2, 2),
            latent_dim=4,
            codebook_size=16,
            dead_code_threshold=0.0,
        )
    )
    disc = Discriminators(DiscriminatorConfig(base_channels=8, num_layers=2, frames_2d=2))
    return tok, disc


def test_vqgan_loss_before_and_after_disc_start(loss_fn: VQGANLoss) -> None:
    torch.manual_seed(0)
    tok, disc = _tiny_models()
    x = torch.rand(2, 3, 4, 16, 16) * 2 - 1

    # before disc_start_step: no adversarial term, and the disc loss is a zero that still reaches its params
    x_rec, q = tok(x)
    loss, logs = loss_fn.generator_loss(x, x_rec, q, disc, step=0, last_layer=tok.last_layer)
    keys = {
        "recon",
        "perceptual",
        "vq",
        "commitment",
        "g_gan",
        "feat_match",
        "d_weight",
        "perplexity",
        "usage",
    }
    assert keys <= logs.keys()
    assert logs["g_gan"] == 0.0 and logs["feat_match"] == 0.0 and logs["d_weight"] == 0.0
    assert logs["perceptual"] > 0 and logs["recon"] > 0
    expected = logs["recon"] + logs["perceptual"] + logs["vq"]
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    loss.backward()
    assert tok.encoder.conv_in.weight.grad is not None
    assert all(p.grad is None for p in disc.parameters())
    tok.zero_grad()
    d, dlogs = loss_fn.discriminator_loss(x, x_rec, disc, step=0)
    assert d.item() == 0.0 and dlogs["d_loss"] == 0.0 and {"logits_real", "logits_fake"} <= dlogs.keys()
    d.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in disc.parameters())
    disc.zero_grad(set_to_none=True)

    # after disc_start_step: GAN and feature matching on, adaptive weight finite and positive
    x_rec, q = tok(x)
    disc.requires_grad_(False)  # the trainer freezes the discriminators for the generator step
    loss, logs = loss_fn.generator_loss(x, x_rec, q, disc, step=10, last_layer=tok.last_layer)
    disc.requires_grad_(True)
    assert logs["g_gan"] > 0 and logs["feat_match"] > 0
    assert math.isfinite(logs["d_weight"]) and logs["d_weight"] > 0
    loss.backward()
    assert tok.decoder.conv_out.weight.grad is not None and all(p.grad is None for p in disc.parameters())
    tok.zero_grad()
    d, dlogs = loss_fn.discriminator_loss(x, x_rec, disc, step=10)
    assert d.item() > 0 and math.isclose(
        dlogs["d_loss"], dlogs["d_loss_3d"] + dlogs["d_loss_2d"], rel_tol=1e-5
    )
    d.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    assert all(p.grad is None for p in tok.parameters())  # x_rec is detached for the disc step


def test_hinge_without_adaptive_weight_uses_unit_weight(empty_torch_home: Path) -> None:
    cfg = VQGANLossConfig(
        perceptual_weight=0.0,
        gan_kind="hinge",
        adaptive_weight=False,
        disc_start_step=0,
        feature_match_weight=0.0,
    )
    loss_fn = VQGANLoss(cfg)
    tok, disc = _tiny_models()
    x = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    x_rec, q = tok(x)
    loss, logs = loss_fn.generator_loss(x, x_rec, q, disc, step=0, last_layer=tok.last_layer)
    assert logs["d_weight"] == 1.0 and logs["feat_match"] == 0.0
    recon = F.l1_loss(x_rec, x).item()
    assert math.isclose(loss.item(), recon + logs["vq"] + 0.1 * logs["g_gan"], rel_tol=1e-4)


def test_generator_feature_matching_follows_its_kind(empty_torch_home: Path) -> None:
    torch.manual_seed(0)
    tok, disc = _tiny_models()
    x = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    with torch.no_grad():
        x_rec, q = tok(x)
    for kind in ("l1", "squared"):
        cfg = VQGANLossConfig(perceptual_weight=0.0, disc_start_step=0, feature_match_kind=kind)
        torch.manual_seed(1)  # the 2D discriminator's frames are drawn at random: the same draw for both
        _, logs = VQGANLoss(cfg).generator_loss(x, x_rec, q, disc, step=0)
        torch.manual_seed(1)
        with torch.no_grad():
            outs = disc(x_rec, x)
        want = sum(
            float(feature_matching_loss(o.feats_real or [], o.feats_fake, kind)) for o in outs.values()
        )
        assert math.isclose(logs["feat_match"], want, rel_tol=1e-5), kind
    with pytest.raises(ConfigError, match="feature_match_kind"):
        from_dict(VQGANLossConfig, {"feature_match_kind": "l2"})


def test_loss_config_from_dict_and_errors() -> None:
    cfg = from_dict(VQGANLossConfig, {"recon_kind": "mse", "gan_kind": "hinge", "disc_start_step": "5"})
    assert cfg.recon_kind == "mse" and cfg.disc_start_step == 5
    with pytest.raises(ConfigError, match="gan_kind"):
        from_dict(VQGANLossConfig, {"gan_kind": "wgan"})
    with pytest.raises(ConfigError, match="gan_weight"):
        VQGANLossConfig(gan_weight=-1.0)
