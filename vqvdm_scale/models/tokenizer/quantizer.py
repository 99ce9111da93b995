"""Vector quantizer: nearest-code lookup, straight-through gradients, EMA codebook, dead-code restarts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """What one quantizer pass returns.

    Attributes:
        z_q: quantized latent with straight-through gradients, ``[B, D, t, h, w]``.
        indices: code index per position, ``[B, t, h, w]`` int64.
        loss: VQ loss (codebook term + beta * commitment; codebook term omitted with EMA), scalar.
        commitment: unweighted commitment term ``||z_e - sg(z_q)||^2``, scalar.
        perplexity: ``exp(entropy)`` of this batch's code histogram (detached).
        usage: fraction of the K codes used in this batch (detached).
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    commitment: Tensor
    perplexity: Tensor
    usage: Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class VectorQuantizer(nn.Module):
    """Codebook of K vectors of size D; maps each latent position to its nearest code.

    With ``use_ema`` the codebook is a buffer updated in training mode by exponential moving averages of
    assignment counts and assigned-vector sums (van den Oord et al. 2017, appendix A.1; Razavi et al.
    2019), with Laplace smoothing of the counts. Otherwise it is a parameter learned through the
    codebook loss ``||sg(z_e) - z_q||^2``.

    Dead-code restart (``dead_code_threshold > 0``, EMA only): on every training forward, right after the
    EMA update, every code whose EMA cluster size is below the threshold is replaced by an encoder output
    drawn uniformly without replacement (with replacement if the batch has fewer positions than dead
    codes) from the current batch using the global torch RNG; its cluster size is reset to 1 and its
    code sum to the new vector, as in Jukebox (Dhariwal et al. 2020). Given the same RNG state and
    inputs the result is deterministic.

    Distributed: this is the one model module that touches torch.distributed, guarded by
    ``dist.is_available() and dist.is_initialized()``. The EMA counts and sums are all-reduced (summed)
    before the update, and the restart vectors are broadcast from rank 0, so every rank keeps an
    identical codebook without the trainer having to sync buffers.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        beta: float = 0.25,
        use_ema: bool = True,
        ema_decay: float = 0.99,
        ema_eps: float = 1e-5,
        dead_code_threshold: float = 0.0,
        l2_normalize: bool = False,
    ) -> None:
        super().__init__()
        if dead_code_threshold > 0 and not use_ema:
            raise ValueError("dead-code restart needs use_ema=True (the codebook must be a buffer)")
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.use_ema = use_ema
        self.ema_decay = ema_decay
        self.ema_eps = ema_eps
        self.dead_code_threshold = dead_code_threshold
        self.l2_normalize = l2_normalize
        init = torch.randn(codebook_size, dim)
        if l2_normalize:
            init = F.normalize(init, dim=1)
        if use_ema:
            self.register_buffer("codebook", init)
            # Cluster sizes start at 1 with sums equal to the codes, so an unused code decays towards
            # itself (sum/size stays ~constant) instead of being divided by a vanishing count.
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            self.register_buffer("embed_avg", init.clone())
        else:
            self.codebook = nn.Parameter(init)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """Keep the EMA statistics in fp32 when the module is cast to half precision (e.g. by DeepSpeed)."""
        super()._apply(fn, recurse)
        if self.use_ema:
            for name in ("codebook", "cluster_size", "embed_avg"):
                buf = self._buffers[name]
                if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                    self._buffers[name] = buf.float()
        return self

    def codes(self) -> Tensor:
        """The codebook as used for lookup (l2-normalised when ``l2_normalize``), ``[K, D]`` fp32."""
        weight = self.codebook.float()
        return F.normalize(weight, dim=1) if self.l2_normalize else weight

    @torch.no_grad()
    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code (squared L2, or cosine when normalised) for each row of ``[N, D]``."""
        codes = self.codes()
        if self.l2_normalize:
            # For unit vectors argmin ||z - e||^2 == argmax z.e (cosine similarity).
            return torch.argmax(flat @ codes.t(), dim=1)
        dist_sq = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ codes.t() + codes.pow(2).sum(1)[None, :]
        return torch.argmin(dist_sq, dim=1)

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        """Quantize ``[B, D, t, h, w]``; updates the EMA codebook in training mode."""
        if z_e.ndim != 5 or z_e.shape[1] != self.dim:
            raise ValueError(f"expected latents [B, {self.dim}, t, h, w], got {tuple(z_e.shape)}")
        b, _, t, h, w = z_e.shape
        in_dtype = z_e.dtype
        # Distances and losses in fp32: bf16 argmins flip between near-equidistant codes.
        flat = rearrange(z_e.float(), "b d t h w -> (b t h w) d")
        if self.l2_normalize:
            flat = F.normalize(flat, dim=1)
        idx = self.nearest(flat)
        codes = self.codes()
        quant = F.embedding(idx, codes)  # gradient reaches the codebook only when it is a parameter
        commitment = F.mse_loss(flat, quant.detach())
        if self.use_ema:
            loss = self.beta * commitment
        else:
            loss = F.mse_loss(quant, flat.detach()) + self.beta * commitment
        counts = torch.bincount(idx, minlength=self.codebook_size).float()
        if self.training and self.use_ema:
            self._ema_update(flat.detach(), idx, counts)
        # Straight-through estimator (Bengio et al. 2013): forward uses z_q, backward copies dL/dz_q to z_e.
        quant_st = flat + (quant - flat).detach()
        z_q = rearrange(quant_st, "(b t h w) d -> b d t h w", b=b, t=t, h=h, w=w).to(in_dtype)
        probs = counts / counts.sum().clamp_min(1.0)
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        usage = (counts > 0).float().mean()
        return QuantizerOutput(
            z_q=z_q,
            indices=idx.view(b, t, h, w).long(),
            loss=loss,
            commitment=commitment,
            perplexity=perplexity.detach(),
            usage=usage.detach(),
        )

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, idx: Tensor, counts: Tensor) -> None:
        """EMA of counts and sums, Laplace-smoothed codebook = sums / counts, then dead-code restart."""
        embed_sum = torch.zeros(self.codebook_size, self.dim, device=flat.device, dtype=torch.float32)
        embed_sum.index_add_(0, idx, flat)
        counts = counts.clone()
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(embed_sum)
        decay = self.ema_decay
        cluster_size = self.cluster_size.float() * decay + counts * (1.0 - decay)
        embed_avg = self.embed_avg.float() * decay + embed_sum * (1.0 - decay)
        # Laplace smoothing (Sonnet's VQ-VAE-EMA): keeps unused codes from dividing by ~0.
        n = cluster_size.sum()
        smoothed = (cluster_size + self.ema_eps) / (n + self.codebook_size * self.ema_eps) * n
        codebook = embed_avg / smoothed[:, None]
        if self.dead_code_threshold > 0:
            dead = cluster_size < self.dead_code_threshold
            num_dead = int(dead.sum().item())
            if num_dead > 0:
                new = self._restart_vectors(flat, num_dead)
                codebook[dead] = new
                embed_avg[dead] = new
                cluster_size[dead] = 1.0
        self.cluster_size.copy_(cluster_size)
        self.embed_avg.copy_(embed_avg)
        self.codebook.copy_(codebook)

    def _restart_vectors(self, flat: Tensor, num: int) -> Tensor:
        """``num`` encoder outputs sampled from this batch (rank 0's batch when distributed)."""
        n = flat.shape[0]
        if n >= num:
            pick = torch.randperm(n, device=flat.device)[:num]
        else:
            pick = torch.randint(0, n, (num,), device=flat.device)
        new = flat[pick].clone()
        if _distributed():
            # Every rank computed the same dead mask from all-reduced counts; rank 0's picks win.
            dist.broadcast(new, src=0)
        return new

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors for ``[B, t, h, w]`` indices, as a latent ``[B, D, t, h, w]``."""
        if indices.ndim != 4:
            raise ValueError(f"expected indices [B, t, h, w], got {tuple(indices.shape)}")
        if indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(
                    f"code indices must be in [0, {self.codebook_size}), got values in [{lo}, {hi}]; "
                    "were they made by a tokenizer with a different codebook?"
                )
        quant = F.embedding(indices.long(), self.codes())
        return rearrange(quant, "b t h w d -> b d t h w")


__all__ = ["QuantizerOutput", "VectorQuantizer"]
