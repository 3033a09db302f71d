#!/usr/bin/env python3
"""Peak training/inference memory of a PyTorch model. Usage: python scripts/memory.py TARGET [options]; --help for all."""
import sys

from model_expert.cli import main
from model_expert.memory.cli import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
