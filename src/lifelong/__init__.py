"""lifelong: continual learning on PyTorch.

data -> streams -> strategies -> training loop -> metrics -> protocols -> reports.
"""
__version__ = "0.1.0"

from .errors import ConfigError, DatasetError, LifelongError  # noqa: E402

__all__ = ["__version__", "ConfigError", "DatasetError", "LifelongError"]
