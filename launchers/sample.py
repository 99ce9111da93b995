"""Sample class-conditional (and long) videos from a trained latent U-Net; writes mp4 + gif + png.

    python launchers/sample.py --run runs/ldm --tokenizer runs/vqgan/tokenizer.safetensors --all-classes \
        --num-videos 8 --sampler ddim --steps 100 --guidance 4.0 --num-clips 3 --output samples/
    torchrun --nproc_per_node 2 launchers/sample.py ...   (each rank writes its own share)
"""

import argparse

from vqvdm_scale.sample.api import SampleConfig
from vqvdm_scale.sample.main import SampleRunConfig, main


def cli() -> None:
    """Parse the flags into a SampleRunConfig and run main."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="training run dir (uses its latest checkpoint's EMA weights)")
    src.add_argument("--checkpoint", help="checkpoint dir or ema.safetensors file")
    p.add_argument("--tokenizer", required=True, help="stage-1 export (tokenizer.safetensors)")
    cls = p.add_mutually_exclusive_group()
    cls.add_argument("--class-id", type=int, default=None, help="class to sample")
    cls.add_argument("--all-classes", action="store_true", help="cycle through every class")
    p.add_argument("--num-videos", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance weight w")
    p.add_argument("--num-clips", type=int, default=1, help="clips per video (> 1: autoregressive extension)")
    p.add_argument("--overlap", type=int, default=0, help="latent frames shared by consecutive clips")
    p.add_argument(
        "--no-quantize", action="store_true", help="decode raw latents without snapping to the codebook"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=None, help="output fps (default: the training clips' fps)")
    p.add_argument("--device", default="auto")
    p.add_argument("--output", required=True)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    sample = SampleConfig(
        sampler=a.sampler,
        steps=a.steps,
        eta=a.eta,
        guidance=a.guidance,
        num_clips=a.num_clips,
        overlap=a.overlap,
        quantize=not a.no_quantize,
        seed=a.seed,
    )
    main(
        SampleRunConfig(
            run=a.run,
            checkpoint=a.checkpoint,
            tokenizer=a.tokenizer,
            class_id=a.class_id,
            all_classes=a.all_classes,
            num_videos=a.num_videos,
            batch_size=a.batch_size,
            output=a.output,
            fps=a.fps,
            device=a.device,
            sample=sample,
        )
    )


if __name__ == "__main__":
    cli()
