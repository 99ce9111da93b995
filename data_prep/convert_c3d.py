"""TGANv2's C3D (conv3d_deepnetA_ucf.npz + mean2.npz of github.com/rezoo/tgan2 release v1.0) -> a C3D
safetensors file for the UCF-101 Inception Score (the mapping: vqvdm_scale.prep.convert_c3d).

python data_prep/convert_c3d.py --npz datasets/models/conv3d_deepnetA_ucf.npz --mean datasets/models/mean2.npz --output runs/detectors/c3d_ucf101.safetensors
"""

from vqvdm_scale.config import Flag, run_cli
from vqvdm_scale.prep.convert_c3d import ConvertC3DConfig, main

FLAGS = {
    "npz": Flag("npz", "TGANv2's conv3d_deepnetA_ucf.npz (Chainer C3D weights)", required=True, path="file"),
    "mean": Flag("mean", "TGANv2's mean2.npz (per-voxel BGR mean)", required=True, path="file"),
    "output": Flag("output", "the .safetensors file to write", metavar="FILE", required=True),
}

if __name__ == "__main__":
    run_cli(ConvertC3DConfig, main, description=__doc__, flags=FLAGS)
