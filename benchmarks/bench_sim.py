"""World speed on this machine: same as `worlddrive bench sim`; prints `RESULT sim_steps_per_s=... ...` last."""

import argparse

from worlddrive.cli import main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0)
    main(["bench", "sim", "--seconds", str(p.parse_args().seconds)])
