"""Methods: what a training step optimises. The loop is shared; a method only turns a batch
into named losses (and says which parameters train, and how)."""
