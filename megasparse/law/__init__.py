"""The Sparsing Law: activation ratio against training data, fitted and reported.

* ``data.py``: activation-ratio curves from TensorBoard logs, measurement files, the authors'
  files and the paper's released curves (``ref:NAME``).
* ``fit.py``: the ReLU and SiLU laws, fitted by non-linear least squares as the paper does.
* ``width_depth.py``: the width–depth bottleneck and the scale trend.
* ``report.py``: tables, markdown reports and plots.

numpy and scipy only at import time (no torch): the fits run anywhere. Definitions and
coefficients: docs/sparsing-law.md §2–§4.
"""
