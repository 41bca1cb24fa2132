"""The example site's first content: its settings and a few pages."""

from __future__ import annotations

from typing import Any

from django.db import migrations

PAGES = [
    # (slug, title, parent slug, body)
    ("docs", "Documentation", None, "How the example site is built."),
    ("intro", "Introduction", "docs", "Every process keeps page URLs in memory."),
    ("blog", "Blog", None, "News about the example site."),
]


def create_content(apps: Any, schema_editor: Any) -> None:
    SiteSettings = apps.get_model("pages", "SiteSettings")
    PageTree = apps.get_model("pages", "PageTree")
    SiteSettings.objects.create(
        pk=1, name="syncache example", tagline="Fresh in every process."
    )
    created: dict[str, Any] = {}
    for slug, title, parent, body in PAGES:
        created[slug] = PageTree.objects.create(
            slug=slug,
            title=title,
            parent=created[parent] if parent else None,
            body=body,
        )


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]

    operations = [migrations.RunPython(create_content, migrations.RunPython.noop)]
