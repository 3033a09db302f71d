"""Measured input/output contracts: padding masks honoured, samples independent, set order, lengths, ranges.

One file per mechanism (`masks`, `batch`, `permutations`, `lengths`, `ranges`, `determinism`) on top of
`core` (the inputs' named dims, running the model, comparing outputs within a stated tolerance);
`cli` holds the capability's options and renderers.
"""
