"""datasets: the synthetic pose-data engine and loaders for real pose datasets.

Every dataset yields samples following one schema (:mod:`datasets.schema`).
"""

from .schema import OPTIONAL_KEYS, REQUIRED_KEYS, check_sample

__all__ = ["REQUIRED_KEYS", "OPTIONAL_KEYS", "check_sample"]
