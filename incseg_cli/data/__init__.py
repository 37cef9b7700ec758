"""Dataset layer: dataset roots on disk (layouts), transforms, the torch Dataset, split files.

Submodules are imported on demand (``from incseg_cli.datasets import open_layout``) so
that importing the package stays cheap.
"""
