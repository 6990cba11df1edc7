"""The program catalog: programs registered through the API and the Programs page, seeded from
CONTROLPLANE_PROGRAMS_FILE, read by every worker."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0006_code_snapshots"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ProgramDefinition",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=64, unique=True)),
                ("description", models.TextField(blank=True, default="")),
                ("command", models.JSONField()),
                ("params", models.JSONField(default=dict)),
                ("launcher", models.CharField(default="direct", max_length=16)),
                ("nproc_per_node", models.PositiveIntegerField(default=1)),
                ("env", models.JSONField(default=dict)),
                ("resources", models.JSONField(default=dict)),
                ("queue", models.CharField(blank=True, default="", max_length=64)),
                (
                    "source",
                    models.CharField(choices=[("seed", "seed"), ("api", "api")], default="api", max_length=8),
                ),
                ("version", models.PositiveIntegerField(default=1)),
                ("retired_at", models.DateTimeField(blank=True, null=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "created_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "updated_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"ordering": ["name"]},
        ),
    ]
