"""Support for testing incseg without the hardware its users have (see ``testing.cuda``)."""
