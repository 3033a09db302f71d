"""The memory engine: allocation tracker, device rules, optimizer states, sharding, batch search."""

from .estimate import EstimateOptions, MemoryEstimate, estimate_memory, meta_copy

__all__ = ["EstimateOptions", "MemoryEstimate", "estimate_memory", "meta_copy"]
