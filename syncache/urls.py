"""URLs of the status page: include them under the admin's prefix.

::

    urlpatterns = [
        path("admin/syncache/", include("syncache.urls")),
        path("admin/", admin.site.urls),
    ]

Before ``admin.site.urls``: the admin's catch-all pattern would answer
first. The page is then ``reverse("syncache:status")``.
"""

from __future__ import annotations

from django.urls import path

from syncache.views import StatusView

app_name = "syncache"

urlpatterns = [
    path("", StatusView.as_view(), name="status"),
]
