"""Every FastAPI dependency of the routes, starting with the settings.

``get_settings`` reads the environment once per process.
"""

from __future__ import annotations

from functools import lru_cache

from app.settings import ServiceSettings
from etl.settings import settings_or_exit


@lru_cache
def get_settings() -> ServiceSettings:
    """The service's settings from the environment and ``.env``, read once (a bad one: exit 2, naming it)."""
    return settings_or_exit(ServiceSettings)
