#!/usr/bin/env python3
"""Check that every number in a review is in the evidence JSON. Usage: python scripts/check_grounding.py REVIEW.md EVIDENCE.json [...]"""
import sys

from model_expert.grounding import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
