"""Stage handlers: one module per workflow stage, pure decisions over idempotent effects."""
