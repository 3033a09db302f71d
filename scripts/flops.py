#!/usr/bin/env python3
"""FLOPs of one training step of a PyTorch model, and its time on a GPU. Usage: python scripts/flops.py TARGET [options]; --help for all."""
import sys

from model_expert.cli import main
from model_expert.flops.cli import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
