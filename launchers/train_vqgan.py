"""Stage 1: train the 3D VQGAN; the finished run exports <run.dir>/tokenizer.safetensors. Runs under python, torchrun, deepspeed and submitit alike.

python launchers/train_vqgan.py --config configs/vqgan/tiny.yaml data.train_shards=DIR run.dir=DIR
deepspeed --num_nodes 1 --num_gpus 2 launchers/train_vqgan.py --config configs/vqgan/tiny.yaml data.train_shards=DIR run.dir=DIR
"""

from vqvdm_scale.config import run_cli
from vqvdm_scale.train.vqgan import VQGANRunConfig, main

if __name__ == "__main__":
    run_cli(VQGANRunConfig, main, description=__doc__)
