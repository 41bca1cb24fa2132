"""The example site's URLs, and the demo's under ``/demo/``."""

from __future__ import annotations

from django.urls import include, path

from demo import views

urlpatterns = [
    path("demo/pid/", views.pid),
    path("demo/read/", views.read),
    path("demo/update/", views.update),
    path("", include("example.urls")),
]
