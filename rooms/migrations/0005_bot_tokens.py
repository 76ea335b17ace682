
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("rooms", "0004_message_archive"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="BotToken",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(help_text="The display name its messages show.", max_length=30)),
                ("key", models.CharField(editable=False, max_length=16, unique=True)),
                ("secret_hash", models.CharField(editable=False, max_length=64)),
                ("all_rooms", models.BooleanField(default=False, help_text="May post in every room (else only in the rooms listed).")),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("revoked_at", models.DateTimeField(blank=True, editable=False, null=True)),
                ("last_used_at", models.DateTimeField(blank=True, editable=False, null=True)),
                ("created_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to=settings.AUTH_USER_MODEL)),
                ("rooms", models.ManyToManyField(blank=True, related_name="bot_tokens", to="rooms.room")),
            ],
            options={"ordering": ["name", "id"]},
        ),
    ]
