"""The whole pipeline at tiny scale on CPU on the built-in synthetic data (see vqvdm_scale.quickstart).

python launchers/quickstart.py                      # the defaults; --dry-run prints every one of them
python launchers/quickstart.py out=/tmp/qs vqgan_steps=50 ldm_steps=50   # a faster smoke run
An installed package (no checkout) runs the same with: python -m vqvdm_scale.quickstart [key=value ...]
"""

from vqvdm_scale.config.cli import run_cli
from vqvdm_scale.quickstart import QuickstartConfig, main

if __name__ == "__main__":
    run_cli(QuickstartConfig, main, description=__doc__)
