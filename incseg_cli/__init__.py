"""incseg: class-incremental semantic segmentation (WILSON, ALIFE and baselines) as CLI stages."""

__version__ = "0.1.0"
