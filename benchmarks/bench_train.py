"""Training throughput and MFU on this machine: same as `worlddrive bench train` with the same options (e.g.
`--config small --batch-size 16 --wm frame,bev --bf16 --seconds 20`); prints `RESULT samples_per_s=... mfu=...` last."""

import sys

from worlddrive.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
