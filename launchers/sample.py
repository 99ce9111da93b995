"""Sample class-conditional (and long) videos from a trained latent U-Net; writes mp4 + gif + png.

python launchers/sample.py --run runs/ldm --tokenizer runs/vqgan/tokenizer.safetensors --all-classes --num-videos 8 --sampler ddim --steps 100 --guidance 4.0 --output runs/samples
python launchers/sample.py --run runs/ldm --tokenizer runs/vqgan/tokenizer.safetensors --class-id 2 --num-clips 4 --overlap 1 --seed 7 --output runs/samples_long
python launchers/sample.py --run runs/ldm --tokenizer runs/vqgan/tokenizer.safetensors --all-classes --num-videos 2048 --format npy --output runs/fake   (lossless frames for launchers/evaluate.py --fake)
python launchers/sample.py --run runs/ldm --tokenizer runs/vqgan/tokenizer.safetensors --condition my_video.mp4 --known 0-3 --num-clips 2 --output runs/predicted   (prediction from real frames; real | generated side by side)
torchrun --nproc_per_node 2 launchers/sample.py --run-dir runs/ldm ...   (each rank writes its own share)
"""

from vqvdm_scale.config import Flag, run_cli
from vqvdm_scale.sample.main import SampleRunConfig, main

FLAGS = {
    "run": Flag("run", "training run dir (uses its latest checkpoint's EMA weights)", path="dir"),
    "run-dir": Flag(
        "run",
        "the same as --run; under torchrun write --run-dir, as torchrun reads --run as its --run-path",
        path="dir",
    ),
    "checkpoint": Flag("checkpoint", "checkpoint dir or ema.safetensors file", path="any"),
    "tokenizer": Flag("tokenizer", "stage-1 export (tokenizer.safetensors)", required=True, path="file"),
    "class-id": Flag("class_id", "class to sample"),
    "all-classes": Flag("all_classes", "cycle through every class"),
    "num-videos": Flag("num_videos", "videos to write"),
    "batch-size": Flag("batch_size", "videos per sampler call on a rank"),
    "sampler": Flag("sample.sampler", "ddim, dpmpp2m (DPM-Solver++ 2M) or ddpm"),
    "steps": Flag("sample.steps", "sampler steps"),
    "eta": Flag("sample.eta", "DDIM eta (0 = deterministic)"),
    "guidance": Flag("sample.guidance", "classifier-free guidance weight w"),
    "num-clips": Flag("sample.num_clips", "clips per video (> 1: autoregressive extension)"),
    "overlap": Flag("sample.overlap", "latent frames shared by consecutive clips (default: the model's way)"),
    "later-steps": Flag("sample.later_steps", "sampler steps of the clips after the first (PVDM's M)"),
    "reconstruction-guidance": Flag(
        "sample.reconstruction_guidance", "w_r: extend a model trained without a context (VDM eq. 7)"
    ),
    "no-quantize": Flag("sample.quantize", "decode raw latents without snapping to the codebook", False),
    "seed": Flag("sample.seed", "base seed"),
    "precision": Flag("sample.precision", "fp32, or bf16 (U-Net and decoder under bf16 autocast)"),
    "compile": Flag(
        "sample.compile", "torch.compile the U-Net and decoder, weights frozen (one-time compile)"
    ),
    "fps": Flag(
        "fps", "frame rate of the generated clips: the model's fps input and the files' (null: training's)"
    ),
    "device": Flag("device", "auto, cpu or cuda"),
    "condition": Flag(
        "condition", "real video (file, or SHARDS#KEY) to predict from / infill", metavar="VIDEO"
    ),
    "known": Flag("known", "its pixel frames to keep, FIRST-LAST (several: 0-3,12-15)"),
    "format": Flag(
        "formats", "video files: mp4, npy, png or a list (npy/png: lossless uint8 frames for metrics)"
    ),
    "output": Flag("output", "output folder", metavar="DIR"),
}

if __name__ == "__main__":
    run_cli(SampleRunConfig, main, description=__doc__, flags=FLAGS)
