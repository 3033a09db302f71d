#!/usr/bin/env python3
"""Parameter counts of a PyTorch model. Usage: python scripts/params.py TARGET [options]; --help for all."""
import sys

from model_expert.cli import main
from model_expert.params import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
