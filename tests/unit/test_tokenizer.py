"""Stage-1 tokenizer: shapes, quantizer maths (EMA, restarts, cosine lookup, stats), overfitting, export."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from tests.helpers import run_on_ranks
from vqvdm_scale.config import ConfigError, from_dict, load_config, to_dict
from vqvdm_scale.formats.tokenizer_export import export_tokenizer, load_tokenizer, read_fingerprint
from vqvdm_scale.models.tokenizer import (
    TOKENIZER_PRESETS,
    TokenizerConfig,
    VectorQuantizer,
    VQTokenizer,
    tokenizer_preset,
)


def tiny_cfg(**kw: object) -> TokenizerConfig:
    base: dict[str, object] = dict(
        base_channels=8,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        downsample=(4, 4, 4),
        latent_dim=4,
        codebook_size=16,
        dead_code_threshold=0.0,
    )
    base.update(kw)
    return TokenizerConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cfg_kw", "clip", "latent"),
    [
        (dict(downsample=(4, 4, 4)), (8, 16, 16), (4, 2, 4, 4)),
        (dict(channel_mult=(1, 1, 2, 2), downsample=(4, 8, 8)), (8, 32, 16), (4, 2, 4, 2)),
        (dict(downsample=(1, 4, 2), attn_at_lowest=False, l2_normalize=True), (3, 8, 8), (4, 3, 2, 4)),
    ],
)
def test_shapes_and_index_round_trip(
    cfg_kw: dict, clip: tuple[int, int, int], latent: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(**cfg_kw)
    assert cfg.latent_shape(*clip) == latent
    model = VQTokenizer(cfg).eval()
    x = torch.rand(2, 3, *clip) * 2 - 1
    with torch.no_grad():
        z_e = model.encode(x)
        assert z_e.shape == (2, *latent)
        q = model.quantize(z_e)
        assert (
            q.z_q.shape == z_e.shape
            and q.indices.shape == (2, *latent[1:])
            and q.indices.dtype == torch.int64
        )
        rec = model.decode(q.z_q)
        assert rec.shape == x.shape
        assert torch.allclose(model.indices_to_latents(q.indices), q.z_q, atol=1e-6)
        assert torch.allclose(model.decode_indices(q.indices), rec, atol=1e-5)
        rec2, q2 = model(x)
        assert torch.equal(q2.indices, q.indices) and torch.allclose(rec2, rec, atol=1e-5)


def test_bad_inputs_and_config_errors() -> None:
    cfg = tiny_cfg()
    with pytest.raises(ValueError, match="not divisible"):
        cfg.latent_shape(6, 16, 16)
    model = VQTokenizer(cfg)
    with pytest.raises(ValueError, match="not divisible"):
        model.encode(torch.zeros(1, 3, 8, 16, 10))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model.encode(torch.zeros(1, 8, 16, 16))
    with pytest.raises(ValueError, match="codebook"):
        model.decode_indices(torch.full((1, 2, 4, 4), 16))
    with pytest.raises(ConfigError, match="downsampling levels"):
        tiny_cfg(downsample=(4, 8, 8))  # 3 halvings, only 2 levels
    with pytest.raises(ConfigError, match="power of 2"):
        tiny_cfg(downsample=(3, 4, 4))
    with pytest.raises(ConfigError, match="use_ema"):
        tiny_cfg(use_ema=False, dead_code_threshold=1.0)
    with pytest.raises(ConfigError, match="tiny"):
        tokenizer_preset("huge")


def test_config_dict_round_trip_and_presets(tmp_path: Path) -> None:
    for name in TOKENIZER_PRESETS:
        cfg = tokenizer_preset(name)
        back = from_dict(TokenizerConfig, json.loads(json.dumps(to_dict(cfg))))
        assert back == cfg and isinstance(back.channel_mult, tuple)
    assert tokenizer_preset("vqvdm").latent_shape(16, 128, 128) == (8, 4, 16, 16)
    assert tokenizer_preset("tats").downsample == (4, 8, 8)
    assert tokenizer_preset("tiny").latent_shape(16, 32, 32)[1:] == (4, 8, 8)
    # presets are copies: editing one does not change the registry
    tokenizer_preset("tiny").codebook_size = 3
    assert TOKENIZER_PRESETS["tiny"].codebook_size == 64
    yml = tmp_path / "t.yaml"
    yml.write_text("base_channels: 8\nchannel_mult: [1, 2]\n")
    cfg = load_config(TokenizerConfig, yml, ["downsample=[2,2,2]", "latent_dim=4"])
    assert cfg.downsample == (2, 2, 2) and cfg.level_factors() == [(2, 2, 2)]


def _set_codebook(q: VectorQuantizer, codes: torch.Tensor) -> None:
    q.codebook.copy_(codes)
    q.embed_avg.copy_(codes)
    q.cluster_size.fill_(1.0)


def _as_latent(vectors: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [1, D, 1, 1, N] so the flattening order (b t h w) is the row order."""
    return vectors.t().reshape(1, vectors.shape[1], 1, 1, vectors.shape[0]).contiguous()


def test_ema_update_matches_hand_computation() -> None:
    eps = 1e-5
    q = VectorQuantizer(4, 2, beta=0.25, use_ema=True, ema_decay=0.5, ema_eps=eps).train()
    codes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    _set_codebook(q, codes)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0]])  # -> codes 0, 0, 1
    out = q(_as_latent(z))
    assert out.indices.flatten().tolist() == [0, 0, 1]
    # by hand: counts (2, 1, 0, 0), sums ((1, 1), (9, 1), 0, 0), decay 0.5
    size = torch.tensor([0.5 + 1.0, 0.5 + 0.5, 0.5, 0.5])
    avg = torch.tensor([[0.5, 0.5], [9.5, 0.5], [0.0, 5.0], [-5.0, -5.0]])
    n = size.sum()
    smoothed = (size + eps) / (n + 4 * eps) * n
    assert torch.allclose(q.cluster_size, size)
    assert torch.allclose(q.embed_avg, avg)
    assert torch.allclose(q.codebook, avg / smoothed[:, None], atol=1e-6)
    # z_q uses the codes before the update; EMA loss is beta * commitment only
    assert torch.allclose(out.z_q.reshape(2, 3).t(), codes[[0, 0, 1]])
    commitment = ((z - codes[[0, 0, 1]]) ** 2).mean()
    assert torch.allclose(out.commitment, commitment) and torch.allclose(out.loss, 0.25 * commitment)
    # eval mode does not touch the codebook
    before = q.codebook.clone()
    q.eval()(_as_latent(z))
    assert torch.equal(q.codebook, before)


def test_dead_code_restart_replaces_only_dead_codes() -> None:
    codes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0], [0.5, 0.5], [11.0, 0.0]])
    restart = VectorQuantizer(4, 2, ema_decay=0.5, dead_code_threshold=0.75).train()
    plain = VectorQuantizer(4, 2, ema_decay=0.5, dead_code_threshold=0.0).train()
    _set_codebook(restart, codes)
    _set_codebook(plain, codes)
    torch.manual_seed(1)
    restart(_as_latent(z))
    plain(_as_latent(z))
    # sizes after the update: (0.5 + 1.5, 0.5 + 1, 0.5, 0.5) -> codes 2 and 3 are dead (< 0.75)
    live = torch.tensor([True, True, False, False])
    assert torch.equal(restart.codebook[live], plain.codebook[live])
    for row in restart.codebook[~live]:
        assert any(torch.equal(row, v) for v in z), f"{row} is not one of the batch's encodings"
    assert not torch.equal(restart.codebook[2], restart.codebook[3])  # drawn without replacement
    assert torch.equal(restart.cluster_size[~live], torch.ones(2))
    assert torch.equal(restart.embed_avg[~live], restart.codebook[~live])
    # deterministic given the torch RNG
    again = VectorQuantizer(4, 2, ema_decay=0.5, dead_code_threshold=0.75).train()
    _set_codebook(again, codes)
    torch.manual_seed(1)
    again(_as_latent(z))
    assert torch.equal(again.codebook, restart.codebook)


def test_cosine_lookup_picks_most_similar_direction() -> None:
    q = VectorQuantizer(3, 2, use_ema=False, l2_normalize=True).eval()
    codebook = torch.tensor([[10.0, 0.0], [0.1, 0.1], [-1.0, -1.0]])
    with torch.no_grad():
        q.codebook.copy_(codebook)
    # Codes of very different norms, so Euclidean and cosine nearest disagree:
    # (5, 1) is L2-nearest to (0.1, 0.1) but points along (10, 0); (-0.05, -0.04) is L2-nearest to
    # (0.1, 0.1) but points along (-1, -1).
    z = torch.tensor([[5.0, 1.0], [1.0, 0.9], [-0.05, -0.04]])
    assert torch.cdist(z, codebook).argmin(1).tolist() == [1, 1, 1]
    out = q(_as_latent(z))
    assert out.indices.flatten().tolist() == [0, 1, 2]
    # the quantized vectors are the unit-norm codes
    assert torch.allclose(out.z_q.reshape(2, 3).t(), F.normalize(codebook, dim=1))


def test_perplexity_and_usage_on_known_assignment() -> None:
    q = VectorQuantizer(4, 2, use_ema=False).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]]))
    z = torch.tensor([[0.1, 0.0], [0.0, 0.2], [9.0, 0.0], [10.0, 1.0]])  # codes 0, 0, 1, 1
    out = q(_as_latent(z))
    assert out.indices.flatten().tolist() == [0, 0, 1, 1]
    assert math.isclose(out.perplexity.item(), 2.0, rel_tol=1e-5)
    assert math.isclose(out.usage.item(), 0.5)
    z = torch.tensor([[0.1, 0.0], [9.0, 0.0], [0.0, 9.0], [-9.0, -9.0]])  # uniform over 4
    out = q(_as_latent(z))
    assert math.isclose(out.perplexity.item(), 4.0, rel_tol=1e-5) and out.usage.item() == 1.0
    # learned codebook: loss = codebook term + beta * commitment, and the codebook gets a gradient
    out.loss.backward()
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0


def test_straight_through_gradient_reaches_encoder() -> None:
    torch.manual_seed(0)
    model = VQTokenizer(tiny_cfg()).train()
    x = torch.rand(1, 3, 4, 8, 8) * 2 - 1
    rec, q = model(x)
    (rec.pow(2).mean() + q.loss).backward()
    assert model.encoder.conv_in.weight.grad is not None
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.last_layer is model.decoder.conv_out.weight


def test_activation_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    a = VQTokenizer(tiny_cfg(use_ema=False)).train()
    b = VQTokenizer(tiny_cfg(use_ema=False, checkpoint_activations=True)).train()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 4, 8, 8) * 2 - 1
    for m in (a, b):
        rec, q = m(x)
        (rec.pow(2).mean() + q.loss).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name  # type: ignore[arg-type]


def test_ema_statistics_stay_fp32_under_bf16_cast() -> None:
    model = VQTokenizer(tiny_cfg()).to(torch.bfloat16).train()
    assert model.decoder.conv_out.weight.dtype == torch.bfloat16
    assert all(b.dtype == torch.float32 for b in model.quantizer.buffers())
    x = torch.rand(1, 3, 4, 8, 8, dtype=torch.bfloat16)
    rec, q = model(x)
    assert rec.dtype == torch.bfloat16 and q.z_q.dtype == torch.bfloat16
    assert model.decode_indices(q.indices).dtype == torch.bfloat16


def _moving_squares(n: int, frames: int, size: int) -> torch.Tensor:
    clips = torch.full((n, 3, frames, size, size), -1.0)
    for i in range(n):
        for t in range(frames):
            y, x = 2 + i * 3, (1 + t + 2 * i) % (size - 5)
            clips[i, i % 3, t, y : y + 5, x : x + 5] = 1.0
    return clips


def test_tiny_tokenizer_overfits_fixed_clips() -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(
        base_channels=8,
        channel_mult=(1, 2),
        downsample=(2, 2, 2),
        latent_dim=8,
        codebook_size=64,
        ema_decay=0.9,
    )
    model = VQTokenizer(cfg).train()
    clips = _moving_squares(2, 8, 16)
    # Predicting the clips' mean value already gives this MSE; the model must do much better than
    # that (i.e. reproduce the squares), not only beat its random-init error.
    constant_mse = F.mse_loss(torch.full_like(clips, clips.mean().item()), clips).item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.time()
    losses = []
    for _ in range(100):
        rec, q = model(clips)
        mse = F.mse_loss(rec, clips)
        (mse + q.loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(mse.item())
    elapsed = time.time() - start
    assert losses[-1] < 0.5 * losses[0], f"MSE {losses[0]:.4f} -> {losses[-1]:.4f}"
    assert losses[-1] < 0.5 * constant_mse, f"final MSE {losses[-1]:.4f} vs constant {constant_mse:.4f}"
    assert elapsed < 30, f"overfitting took {elapsed:.1f}s"


def test_export_round_trip_and_fingerprint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = VQTokenizer(cfg)
    model.train()(torch.rand(1, 3, 4, 8, 8))  # move the EMA buffers off their init
    model.eval()
    p1, p2 = tmp_path / "a" / "tok.safetensors", tmp_path / "tok2.safetensors"
    fp1 = export_tokenizer(model, cfg, p1)
    fp2 = export_tokenizer(model, cfg, p2)
    assert fp1 == fp2 and len(fp1) == 64 and read_fingerprint(p1) == fp1
    sidecar = json.loads((p1.parent / "tok.safetensors.json").read_text())
    assert sidecar["fingerprint"] == fp1 and sidecar["config"]["codebook_size"] == 16
    assert not [f for f in p1.parent.iterdir() if ".tmp" in f.name]
    loaded, cfg2, fp = load_tokenizer(p1)
    assert cfg2 == cfg and fp == fp1 and not loaded.training
    idx = torch.randint(0, 16, (1, 2, 4, 4))
    with torch.no_grad():
        assert torch.equal(loaded.decode_indices(idx), model.decode_indices(idx))
    # a changed weight changes the fingerprint
    with torch.no_grad():
        model.decoder.conv_out.bias.add_(1.0)
    assert export_tokenizer(model, cfg, tmp_path / "c.safetensors") != fp1
    with pytest.raises(ValueError, match="differs"):
        export_tokenizer(model, tiny_cfg(latent_dim=8), tmp_path / "d.safetensors")


def test_edited_export_is_refused(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    path = tmp_path / "tok.safetensors"
    export_tokenizer(VQTokenizer(cfg), cfg, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    # tensor edited, old fingerprint kept
    edited = dict(tensors)
    edited["decoder.conv_out.bias"] = edited["decoder.conv_out.bias"] + 1e-3
    save_file(edited, str(tmp_path / "t.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="corrupt or was edited"):
        load_tokenizer(tmp_path / "t.safetensors")
    # config metadata edited, tensors kept
    cfg_meta = json.loads(meta["config"])
    cfg_meta["beta"] = 0.5
    save_file(tensors, str(tmp_path / "c.safetensors"), metadata={**meta, "config": json.dumps(cfg_meta)})
    with pytest.raises(ValueError, match="corrupt or was edited"):
        load_tokenizer(tmp_path / "c.safetensors")
    # not an export at all
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a vqvdm tokenizer"):
        read_fingerprint(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError):
        load_tokenizer(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.safetensors")


def _two_rank_ema(rank: int, world: int) -> list[list[float]]:
    """Each rank sees a different batch; the codebooks must stay identical (all-reduce + broadcast)."""
    torch.manual_seed(100 + rank)  # different RNG per rank: restart picks must still agree
    q = VectorQuantizer(8, 2, ema_decay=0.5, dead_code_threshold=0.6).train()
    with torch.no_grad():
        init = torch.arange(16, dtype=torch.float32).reshape(8, 2)
        q.codebook.copy_(init)
        q.embed_avg.copy_(init)
    z = torch.randn(6, 2) + rank * 3.0
    q(_as_latent(z))
    q(_as_latent(z * 0.5))
    return q.codebook.tolist()


@pytest.mark.slow
def test_ema_codebook_stays_identical_across_ranks() -> None:
    a, b = run_on_ranks(_two_rank_ema, world_size=2, timeout=120)
    assert a == b
