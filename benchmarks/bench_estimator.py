"""The estimator benchmark; the same as `ktae bench` (see `ktae bench --help`)."""

import sys

from ktae.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
