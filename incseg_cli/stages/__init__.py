"""Library functions behind the CLI commands: each takes resolved options and runs a stage."""
