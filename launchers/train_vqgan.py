"""Stage 1: train the 3D VQGAN. Runs under python, torchrun, deepspeed and submitit alike.

python launchers/train_vqgan.py --config configs/vqgan/tiny.yaml data.train_shards=DIR run.dir=DIR
deepspeed --num_nodes 1 --num_gpus 2 launchers/train_vqgan.py --config ... (same overrides)
"""

from vqvdm_scale.config import parse_cli
from vqvdm_scale.train.vqgan import VQGANRunConfig, main

if __name__ == "__main__":
    main(parse_cli(VQGANRunConfig, description=__doc__))
