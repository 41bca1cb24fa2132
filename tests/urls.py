"""URLs of the scenario tests' views (``ROOT_URLCONF``)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from tests import views

urlpatterns = [
    path("pid/", views.pid, name="pid"),
    path("page/<int:pk>/url/", views.page_url, name="page-url"),
    path("page/<int:pk>/slug/", views.page_set_slug, name="page-set-slug"),
    path("setting/<str:name>/", views.setting_value, name="setting"),
    path(
        "setting/<str:name>/async/",
        views.setting_value_async,
        name="setting-async",
    ),
    path("setting/<str:name>/save/", views.setting_save, name="setting-save"),
    path("setting/<str:name>/update/", views.setting_update, name="setting-update"),
    # The status page, under the admin (tests/test_status.py).
    path("admin/syncache/", include("syncache.urls")),
    path("admin/", admin.site.urls),
]
