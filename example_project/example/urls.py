"""URLs of the example site."""

from __future__ import annotations

from django.urls import path

from pages import views

urlpatterns = [
    path("report/", views.report, name="report"),
    path("", views.page_detail, name="home"),
    path("<path:path>/", views.page_detail, name="page"),
]
