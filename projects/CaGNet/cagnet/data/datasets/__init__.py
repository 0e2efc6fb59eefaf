# Copyright (c) CaGNet-D2 contributors.
"""Dataset registrations, one module per dataset; each registers its splits on import."""
from . import register_synthetic_scenes  # noqa: F401
