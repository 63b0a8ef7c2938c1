"""megasparse: LLM pretraining with activation-sparsity counters measured inside the MLP kernels."""

__version__ = "0.1.0"
