"""The version of incseg, its own module so that what records it (checkpoints, manifests,
banks) does not import the package root, which exposes the whole API."""

__version__ = "0.1.0"
