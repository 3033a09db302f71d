#!/usr/bin/env python3
"""What changed between two evidence files, as a Markdown table. Usage: python scripts/compare.py BASE.json HEAD.json [--json]"""
import sys

from model_expert.compare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
