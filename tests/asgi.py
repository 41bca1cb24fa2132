"""ASGI application of the test project, for a real server (uvicorn).

Start it with the environment of ``Backend.env()``: ``tests.settings`` then
applies the test's settings (cache backend, test database) on import.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

application = get_asgi_application()
