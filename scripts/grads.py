#!/usr/bin/env python3
"""Gradient health of a PyTorch model over sampled training steps. Usage: python scripts/grads.py TARGET [options]; --help for all."""
import sys

from model_expert.cli import main
from model_expert.grads import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
