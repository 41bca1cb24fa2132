"""The demo of the syncache example site: ``manage.py demo``."""

from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "demo"
