"""probe.py: measured training dynamics of a model on its batches.

One file per mechanism: `workbench` (the deep copy that is trained, its initial values, the loss),
`initial_loss` (the first loss and what a uniform prediction would give), `overfit` (fit one batch),
`curvature` (Hessian top eigenvalue: SGD's quadratic limit 2/lambda_max, shown beside the measured one),
`lr_range` (the LR range test that brackets the search), `line_search` (real training runs at a few LRs: the
suggested and the breakdown LR), `update_ratio` (|dw|/|w| after one step), `charts` (mermaid line charts), `cli` (options, findings, rendering).
"""
