"""Loss functions: pure functions of tensors, no model or data inside."""
