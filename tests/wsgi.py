"""WSGI application of the test project, for a real server (gunicorn).

Start it with the environment of ``Backend.env()``: ``tests.settings`` then
applies the test's settings (cache backend, test database) on import.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

application = get_wsgi_application()
