#!/usr/bin/env python3
"""Measured input/output contract of a PyTorch model. Usage: python scripts/contract.py TARGET [options]; --help for all."""
import sys

from model_expert.cli import main
from model_expert.contract.cli import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
