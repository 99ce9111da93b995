"""Video shards -> latent shards + manifest.json with an exported tokenizer (see vqvdm_scale.prep.encode_latents).

    python data_prep/encode_latents.py --tokenizer runs/vqgan/tokenizer.safetensors --input s3://b/ucf-128 \
        --output s3://b/ucf-128-latents --windows all --batch-size 16 --workers 4
    torchrun --nproc_per_node 8 data_prep/encode_latents.py ...   (input shard i goes to rank i % world)
"""

import argparse

from vqvdm_scale.prep.encode_latents import EncodeConfig, main


def cli() -> None:
    """Parse the command line and run main (guarded: decode workers re-import this file)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", required=True, help="exported tokenizer (.safetensors)")
    parser.add_argument(
        "--input", required=True, help="video shards: dir with manifest.json, brace pattern, or list"
    )
    parser.add_argument("--output", required=True, help="latent shard folder: local path or fsspec URL")
    parser.add_argument(
        "--windows", default="all", help="'all' non-overlapping windows per video, or N evenly spaced"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="clips per encoder call")
    parser.add_argument("--workers", type=int, default=0, help="video decode processes per rank (0 = inline)")
    parser.add_argument(
        "--store", default="indices", choices=["indices", "latents"], help="code indices or fp16 z_q"
    )
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (keep equal on re-runs)")
    a = parser.parse_args()
    main(
        EncodeConfig(
            tokenizer=a.tokenizer,
            input=a.input,
            output=a.output,
            windows=a.windows,
            batch_size=a.batch_size,
            workers=a.workers,
            store=a.store,
            frames=a.frames,
            stride=a.stride,
            resolution=a.resolution,
            device=a.device,
            threads=a.threads,
        )
    )


if __name__ == "__main__":
    cli()
