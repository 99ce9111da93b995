"""sample.precision=bf16: the U-Net and the tokenizer's decoder really run in bf16, and give fp32 back.

Tiny networks of the shipped tiny configs, randomly initialised (every weight drawn, so that the U-Net's
zero-initialised output layer does not hide the difference).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.ldm import network
from vqvdm_scale.config import ConfigError
from vqvdm_scale.diffusion import GaussianDiffusion
from vqvdm_scale.formats.latent_shards import LatentStats
from vqvdm_scale.formats.ldm_export import LatentSpec
from vqvdm_scale.models.tokenizer import VQTokenizer
from vqvdm_scale.models.unet.model import UNet3D
from vqvdm_scale.sample.api import SampleConfig, compile_for_sampling, decode_latents, generate_latents


def _conv_outputs(module: torch.nn.Module) -> set[torch.dtype]:
    """The dtypes every Conv3d of ``module`` puts out from now on (autocast casts inside the op)."""
    seen: set[torch.dtype] = set()
    for m in module.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    return seen


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_bf16_sampling_runs_the_unet_and_the_decoder_in_bf16_and_returns_fp32() -> None:
    cfg, shape, vq = network(
        {"kind": "latent", "config": "ldm/tiny.yaml", "overrides": [], "vqgan_config": None}
    )
    torch.manual_seed(0)
    net = UNet3D(cfg.model).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    diffusion = GaussianDiffusion(cfg.diffusion)
    c = shape[0]
    spec = LatentSpec(tuple(shape), LatentStats(torch.zeros(c), torch.ones(c)), fps=25.0)  # type: ignore[arg-type]
    labels = torch.zeros(2, dtype=torch.long)

    def sample(precision: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(3)
        return generate_latents(
            net, diffusion, spec, labels, SampleConfig(steps=3, precision=precision), generator=g
        )  # type: ignore[arg-type]

    seen = _conv_outputs(net)
    z32 = sample("fp32")
    assert seen == {torch.float32}
    seen.clear()
    z16 = sample("bf16")
    assert seen == {torch.bfloat16} and z16.dtype == torch.float32
    assert 0 < _rel(z16, z32) < 0.05  # bf16 rounding, not another answer

    tok = VQTokenizer(vq.model).eval()
    seen = _conv_outputs(tok.decoder)
    v32 = decode_latents(tok, z32, spec)
    assert seen == {torch.float32}
    seen.clear()
    v16 = decode_latents(tok, z32, spec, precision="bf16")
    assert seen == {torch.bfloat16} and v16.dtype == torch.float32
    assert 0 < _rel(v16, v32) < 0.05


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match="fp32 or bf16"):
        SampleConfig(precision="fp16")  # type: ignore[arg-type]


def test_compiled_sampling_freezes_the_weights_and_gives_the_eager_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "freezing", False)  # given back after the test
    cfg, shape, vq = network(
        {"kind": "latent", "config": "ldm/tiny.yaml", "overrides": [], "vqgan_config": None}
    )
    torch.manual_seed(0)
    net = UNet3D(cfg.model).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    tok = VQTokenizer(vq.model).eval()
    diffusion = GaussianDiffusion(cfg.diffusion)
    c = shape[0]
    spec = LatentSpec(tuple(shape), LatentStats(torch.zeros(c), torch.ones(c)), fps=25.0)  # type: ignore[arg-type]
    labels = torch.zeros(2, dtype=torch.long)
    sample = SampleConfig(steps=2, compile=True)

    def video(model: torch.nn.Module) -> torch.Tensor:
        z = generate_latents(
            model, diffusion, spec, labels, sample, generator=torch.Generator().manual_seed(3)
        )
        return decode_latents(tok, z, spec)

    eager = video(net)
    compiled = compile_for_sampling(net, tok)
    assert inductor_config.freezing and type(tok.decoder).__name__ == "OptimizedModule"
    assert compiled.config is net.config  # what generate_latents reads the classes from
    assert _rel(video(compiled), eager) < 1e-3


def test_training_refuses_sample_compile() -> None:
    from tests.conftest import REPO
    from vqvdm_scale.config import load_config
    from vqvdm_scale.train.ldm import LDMRunConfig, main

    cfg = load_config(LDMRunConfig, REPO / "configs" / "ldm" / "tiny.yaml", ["sample.compile=true"])
    with pytest.raises(ConfigError, match="sample.compile freezes the weights"):
        main(cfg)  # before anything is read or built
