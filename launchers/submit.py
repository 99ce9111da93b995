"""Submit a stage to Slurm (or run it through submitit locally): one launcher for every stage.

python launchers/submit.py --stage vqgan|encode|ldm|sample|eval --config CFG [key=value ...] --nodes N --gpus-per-node G [--partition P --account A --time HH:MM:SS --constraint C --qos Q --mem M] [--cluster slurm|local|debug] [--dry-run]
python launchers/submit.py --stage ldm --config configs/ldm/B.yaml --slurm-config configs/slurm/example.yaml --nodes 2 --gpus-per-node 8 run.dir=runs/ldm_B data.train_latents=... tokenizer=...
python launchers/submit.py --stage encode --config enc.yaml --array-tasks 16 --cpu    (a job array, one task per shard range)
python launchers/submit.py --stage eval --gpus-per-node 8 real=data/ucf101_test fake=runs/fake metrics=[fvd,kvd] i3d=weights/i3d_torchscript.pt output=runs/eval/results.json
"""

from __future__ import annotations

import argparse
import sys

from vqvdm_scale.config import UserError
from vqvdm_scale.config.cli import fail
from vqvdm_scale.launch.submit import load_stage, stages, submit


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The launcher's options; ``key=value`` overrides go to the stage (``slurm.key=value`` to Slurm)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n".join(__doc__.split("\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--stage",
        required=True,
        choices=sorted(stages()),
        help="which stage's main(cfg) the job runs; logs go to <run.dir>/slurm/ (vqgan, ldm), <output>/slurm/"
        " (encode, sample) or <folder of output>/slurm/ (eval; runs/eval/slurm/ for a bare file name)",
    )
    p.add_argument(
        "--config", "-c", metavar="FILE", help="the stage's YAML config (its slurm: section is read too)"
    )
    p.add_argument("--slurm-config", metavar="FILE", help="Slurm settings, e.g. configs/slurm/example.yaml")
    p.add_argument("--nodes", type=int, help="nodes per job [slurm.nodes]")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node = ranks per node [slurm.gpus_per_node]")
    p.add_argument(
        "--cpu", action="store_true", help="a CPU-only cluster: no GPU request [slurm.request_gpus=false]"
    )
    p.add_argument("--partition", help="[slurm.partition]")
    p.add_argument("--account", help="[slurm.account]")
    p.add_argument("--time", help="wall-clock limit HH:MM:SS [slurm.time]")
    p.add_argument("--constraint", help="[slurm.constraint]")
    p.add_argument("--qos", help="[slurm.qos]")
    p.add_argument("--mem", help="memory per node, e.g. 400G [slurm.mem]")
    p.add_argument(
        "--array-tasks", type=int, help="encode: array tasks sharing the shards [slurm.array_tasks]"
    )
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], help="[slurm.cluster]; default slurm")
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and sbatch script; submit nothing"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="stage config overrides; slurm.key=value for Slurm"
    )
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Parse, resolve the stage and Slurm configs, and submit (or print, with --dry-run)."""
    args = parse(argv)
    flags = {
        "nodes": args.nodes,
        "gpus_per_node": args.gpus_per_node,
        "request_gpus": False if args.cpu else None,
        "partition": args.partition,
        "account": args.account,
        "time": args.time,
        "constraint": args.constraint,
        "qos": args.qos,
        "mem": args.mem,
        "array_tasks": args.array_tasks,
        "cluster": args.cluster,
    }
    try:
        cfg, slurm = load_stage(args.stage, args.config, args.overrides, args.slurm_config, flags)
        submit(args.stage, cfg, slurm, dry_run=args.dry_run)
    except UserError as e:
        fail(e)


if __name__ == "__main__":
    main(sys.argv[1:])
