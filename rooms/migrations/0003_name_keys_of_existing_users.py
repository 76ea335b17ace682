"""The confusable keys of every account that existed before NameKey (rooms.names)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import migrations


def fill(apps: Any, schema_editor: Any) -> None:
    from rooms import names

    user_model = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    name_key = apps.get_model("rooms", "NameKey")
    field = getattr(user_model, "USERNAME_FIELD", "username")
    rows = []
    for user in user_model.objects.all().iterator():
        for key in names.keys(str(getattr(user, field))):
            rows.append(name_key(user_id=user.pk, key=key))
    name_key.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)


class Migration(migrations.Migration):
    dependencies = [
        ("rooms", "0002_identity_moderation_tombstones"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
