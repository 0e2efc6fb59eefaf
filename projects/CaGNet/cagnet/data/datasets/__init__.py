# Copyright (c) CaGNet-D2 contributors.
"""Dataset registrations, one module per dataset; each registers its splits on import."""
from . import register_synthetic_scenes  # noqa: F401
from . import register_coco_stuff  # noqa: F401
from . import register_pascal_context  # noqa: F401
from . import register_pascal_voc  # noqa: F401
