"""The whole pipeline at tiny scale on CPU on the built-in synthetic data (see vqvdm_scale.quickstart).

python launchers/quickstart.py                      # out=runs/quickstart
python launchers/quickstart.py out=/tmp/qs vqgan_steps=50 ldm_steps=50   # a faster smoke run
"""

from vqvdm_scale.config import parse_cli
from vqvdm_scale.quickstart import QuickstartConfig, main

if __name__ == "__main__":
    main(parse_cli(QuickstartConfig, description=__doc__))
