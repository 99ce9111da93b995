"""Raw videos -> WebDataset tar shards + manifest.json (see vqvdm_scale.prep.make_shards for the contract).

python data_prep/make_shards.py --input ../shared/data/videos --output runs/data/real --resolution 128 --shard-size 64 --workers 2
python data_prep/make_shards.py --input UCF-101 --output s3://bucket/ucf101-128 --layout ucf101 --split-file ucfTrainTestlist/trainlist01.txt --workers 16
python data_prep/make_shards.py --input runs/data/raw --output runs/data/synthetic --synthetic --synthetic-classes 4 --resolution 32
"""

from vqvdm_scale.config import Flag, check_path, run_cli
from vqvdm_scale.data.synthetic import write_synthetic_dataset
from vqvdm_scale.prep.make_shards import ShardsConfig, main

FLAGS = {
    "input": Flag("input", "dataset folder (or .csv/.jsonl file for --layout manifest)", required=True),
    "output": Flag(
        "output", "output folder or URL: local path, s3://, gs://, memory://", metavar="DIR", required=True
    ),
    "layout": Flag("layout", "folder, ucf101, sky or manifest"),
    "split-file": Flag("split_file", "ucf101: trainlist0N.txt or testlist0N.txt", path="file"),
    "resolution": Flag("resolution", "short side of the stored frames (even)"),
    "shard-size": Flag("shard_size", "videos per shard"),
    "workers": Flag("workers", "worker processes (0 = inline)"),
    "storage": Flag("storage", "mp4 or npy"),
    "min-frames": Flag("min_frames", "skip videos with fewer frames"),
    "max-frames": Flag("max_frames", "keep at most this many leading frames"),
    "synthetic": Flag("synthetic", "first write the built-in synthetic dataset to --input"),
    "synthetic-classes": Flag("synthetic_classes", "classes of the synthetic dataset"),
}


def make_shards(cfg: ShardsConfig) -> None:
    """Write the synthetic dataset first when asked, check the input exists, then shard it."""
    if cfg.synthetic:
        write_synthetic_dataset(cfg.input, num_classes=cfg.synthetic_classes)
    kind = "file" if cfg.layout == "manifest" else "dir"
    check_path(cfg.input, "--input", kind, FLAGS["input"].help)
    main(cfg)


if __name__ == "__main__":  # guarded: worker processes re-import this file
    run_cli(ShardsConfig, make_shards, description=__doc__, flags=FLAGS)
