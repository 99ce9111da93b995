"""Raw videos -> WebDataset tar shards + manifest.json (see vqvdm_scale.prep.make_shards for the contract).

    python data_prep/make_shards.py --input /data/UCF-101 --output s3://bucket/ucf101-128 --layout ucf101 \
        --split-file /data/ucfTrainTestlist/trainlist01.txt --workers 16
    python data_prep/make_shards.py --synthetic --input /tmp/synth --output /tmp/synth_shards
"""

import argparse

from vqvdm_scale.data.synthetic import write_synthetic_dataset
from vqvdm_scale.prep.make_shards import ShardsConfig, main


def cli() -> None:
    """Parse the flags and run make_shards (guarded: worker processes re-import this file)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input", required=True, help="dataset folder (or .csv/.jsonl file for --layout manifest)"
    )
    parser.add_argument(
        "--output", required=True, help="output folder or URL: local path, s3://, gs://, memory://"
    )
    parser.add_argument("--layout", default="folder", choices=["folder", "ucf101", "sky", "manifest"])
    parser.add_argument("--split-file", default=None, help="ucf101: trainlist0N.txt or testlist0N.txt")
    parser.add_argument("--resolution", type=int, default=128, help="short side of the stored frames (even)")
    parser.add_argument("--shard-size", type=int, default=64, help="videos per shard")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0 = inline)")
    parser.add_argument("--storage", default="mp4", choices=["mp4", "npy"])
    parser.add_argument("--min-frames", type=int, default=16, help="skip videos with fewer frames")
    parser.add_argument("--max-frames", type=int, default=None, help="keep at most this many leading frames")
    parser.add_argument(
        "--synthetic", action="store_true", help="first write the built-in synthetic dataset to --input"
    )
    parser.add_argument("--synthetic-classes", type=int, default=4, help="classes of the synthetic dataset")
    args = parser.parse_args()
    if args.synthetic:
        write_synthetic_dataset(args.input, num_classes=args.synthetic_classes)
    main(
        ShardsConfig(
            input=args.input,
            output=args.output,
            layout=args.layout,
            split_file=args.split_file,
            resolution=args.resolution,
            shard_size=args.shard_size,
            workers=args.workers,
            storage=args.storage,
            min_frames=args.min_frames,
            max_frames=args.max_frames,
        )
    )


if __name__ == "__main__":
    cli()
