"""Device-model backends for the stubdomain agent: `sim` (pure Python) and `qemu` (QMP)."""
