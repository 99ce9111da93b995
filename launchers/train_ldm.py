"""Stage 2: train the latent video U-Net from cached latents. Runs under python, torchrun, deepspeed, submitit.

python launchers/train_ldm.py --config configs/ldm/tiny.yaml data.train_latents=DIR tokenizer=EXPORT run.dir=DIR
deepspeed --num_nodes 1 --num_gpus 2 launchers/train_ldm.py --config configs/ldm/tiny.yaml ...   (multi-node: --num_nodes N --hostfile H)
"""

from vqvdm_scale.config import run_cli
from vqvdm_scale.train.ldm import LDMRunConfig, main

if __name__ == "__main__":
    run_cli(LDMRunConfig, main, description=__doc__)
