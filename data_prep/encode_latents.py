"""Video shards -> latent shards + manifest.json with an exported tokenizer (see vqvdm_scale.prep.encode_latents).

python data_prep/encode_latents.py --tokenizer runs/vqgan/tokenizer.safetensors --input runs/data/synthetic --output runs/latents --frames 16 --resolution 32 --windows all
python data_prep/encode_latents.py --tokenizer runs/vqgan/tokenizer.safetensors --input runs/data/synthetic --output runs/latents   (the clip size the tokenizer was trained on)
python data_prep/encode_latents.py --tokenizer T --input s3://b/ucf-128 --output s3://b/ucf-128-latents --batch-size 16 --workers 4
torchrun --nproc_per_node 8 data_prep/encode_latents.py ...   (input shard i goes to rank i % world)
"""

from vqvdm_scale.config import Flag, UserError, run_cli
from vqvdm_scale.formats.tokenizer_export import read_fingerprint
from vqvdm_scale.prep.encode_latents import EncodeConfig, main

FLAGS = {
    "tokenizer": Flag("tokenizer", "exported tokenizer (.safetensors)", required=True, path="file"),
    "input": Flag(
        "input", "video shards: dir with manifest.json, brace pattern or list", required=True, path="any"
    ),
    "output": Flag("output", "latent shard folder: local path or fsspec URL", metavar="DIR", required=True),
    "windows": Flag("windows", "'all' non-overlapping windows per video, or N evenly spaced"),
    "batch-size": Flag("batch_size", "clips per encoder call"),
    "workers": Flag("workers", "video decode processes per rank (0 = inline)"),
    "store": Flag("store", "indices (code indices) or latents (fp16 z_q)"),
    "frames": Flag("frames", "frames per clip (default: the tokenizer's; another value is refused)"),
    "stride": Flag("stride", "take every k-th source frame"),
    "strides": Flag(
        "strides", "several frame strides (e.g. 1,2,4): windows at each, fps = source fps / stride"
    ),
    "context": Flag("context", "previous: store each window's predecessor (PVDM previous_clip training)"),
    "resolution": Flag("resolution", "square crop size (default: the tokenizer's; another is refused)"),
    "device": Flag("device", "auto, cpu or cuda"),
    "threads": Flag("threads", "torch CPU threads (keep equal on re-runs)"),
}


def encode(cfg: EncodeConfig) -> None:
    """Refuse a --tokenizer that is not a tokenizer export (one line, before any work), then encode."""
    try:
        read_fingerprint(cfg.tokenizer)  # reads the header only
    except (OSError, ValueError) as e:
        raise UserError(f"--tokenizer: {e}") from e
    main(cfg)


if __name__ == "__main__":  # guarded: decode workers re-import this file
    run_cli(EncodeConfig, encode, description=__doc__, flags=FLAGS)
