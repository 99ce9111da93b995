"""Evaluate generated videos: FVD, KVD, IS, FVD_128, the drift curve and tokenizer reconstruction, with the
protocol recorded in results.json. Runs in one process or under torchrun/deepspeed/srun (ranks share the clips).

python launchers/evaluate.py --real data/ucf101_test --split test --fake runs/fake --metrics fvd,kvd,is --i3d weights/i3d_torchscript.pt --c3d weights/c3d_ucf101.pt --output runs/eval/results.json
python launchers/evaluate.py --real data/ucf101_test --run runs/ldm --tokenizer runs/vqgan/tokenizer.safetensors --guidance 4 --steps 100 --metrics fvd,kvd,is,fvd128,drift --i3d weights/i3d_torchscript.pt --c3d weights/c3d_ucf101.pt
python launchers/evaluate.py --real data/ucf101_test --run runs/ldm --tokenizer ... --sweep guidance=1,2,3,4,6 --metrics fvd --i3d ...   (one result per weight, a table and a plot)
python launchers/evaluate.py --real data/sky_test --tokenizer runs/vqgan/tokenizer.safetensors --metrics recon --i3d ... protocol.resolution=128
torchrun --nproc_per_node 8 launchers/evaluate.py --run-dir runs/ldm ...   (the same numbers on any number of ranks; torchrun takes --run as its own --run-path)
"""

from vqvdm_scale.config import Flag, run_cli
from vqvdm_scale.evaluate.config import EvalConfig
from vqvdm_scale.evaluate.main import main

FLAGS = {
    "real": Flag("real", "real video shards (make_shards dir, brace pattern or list; any fsspec URL)"),
    "split": Flag("split", "the split the real shards hold (checked against their split file), e.g. test"),
    "fake": Flag(
        "fake", "folder of generated videos as lossless frames (sample.py --format npy|png)", path="dir"
    ),
    "run": Flag(
        "run", "LDM run dir, checkpoint dir or ema.safetensors to sample from on the fly", path="any"
    ),
    "run-dir": Flag(
        "run",
        "the same as --run; under torchrun write --run-dir, as torchrun reads --run as its --run-path",
        path="any",
    ),
    "tokenizer": Flag(
        "tokenizer", "stage-1 export (tokenizer.safetensors), for --run and recon", path="file"
    ),
    "metrics": Flag("metrics", "comma list of fvd, kvd, is, fvd128, drift, recon"),
    "i3d": Flag("i3d", "FVD detector: i3d_torchscript.pt (or TATS' i3d_pretrained_400.pt), path or URL"),
    "c3d": Flag("c3d", "IS classifier: c3d_ucf101.pt (or data_prep/convert_c3d.py output), path or URL"),
    "lpips-weights": Flag("lpips_weights", "torchvision vgg16-397923af.pth for the recon LPIPS", path="file"),
    "num-samples": Flag("protocol.num_fake", "generated clips for FVD/KVD (StyleGAN-V: 2048)"),
    "num-real": Flag("protocol.num_real", "real videos, one clip each (StyleGAN-V: the first 2048)"),
    "is-preset": Flag("protocol.is_preset", "IS protocol: stylegan-v, tganv2 or tgan"),
    "is-samples": Flag("protocol.is_samples", "generated clips per IS draw (default: the preset's)"),
    "random-detectors": Flag(
        "random_detectors", "random-weight I3D/C3D/LPIPS of the exact architectures (smoke tests only)"
    ),
    "sampler": Flag("sample.sampler", "ddim, dpmpp2m or ddpm (with --run)"),
    "steps": Flag("sample.steps", "sampler steps (with --run)"),
    "guidance": Flag("sample.guidance", "classifier-free guidance weight w (with --run)"),
    "later-steps": Flag("sample.later_steps", "sampler steps of extension clips, fvd128/drift (with --run)"),
    "seed": Flag("sample.seed", "sampling seed (with --run)"),
    "ema": Flag("ema", "sample the EMA weights (the only exported ones)"),
    "sweep": Flag("sweep", "guidance=1,2,3,4,6: one result per weight, a table and a PNG plot"),
    "batch-size": Flag("batch_size", "clips per detector / sampler call on a rank"),
    "cache-dir": Flag("cache_dir", "where real features are cached"),
    "device": Flag("device", "auto, cpu or cuda"),
    "output": Flag("output", "results JSON", metavar="FILE"),
}

if __name__ == "__main__":
    run_cli(EvalConfig, main, description=__doc__, flags=FLAGS)
