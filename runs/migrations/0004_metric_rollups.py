"""Metric rollups (runs/rollups.py), backfilled from the existing points.

The backfill reads every point once per level-0 pass plus one pass over the rollups per level: about
a minute per hundred million points; on a huge database run it in a maintenance window.
"""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models


def backfill(apps: Any, schema_editor: Any) -> None:
    # The rollups module speaks raw SQL on the table names only, so the current code is safe to
    # call from this migration.
    from runs.rollups import rebuild_all

    rebuild_all()


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0003_fleet"),
    ]

    operations = [
        migrations.CreateModel(
            name="MetricRollup",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "series",
                        "level",
                        "bucket",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("level", models.SmallIntegerField()),
                ("bucket", models.BigIntegerField()),
                ("min", models.FloatField(null=True)),
                ("min_step", models.BigIntegerField(null=True)),
                ("max", models.FloatField(null=True)),
                ("max_step", models.BigIntegerField(null=True)),
                ("last", models.FloatField(null=True)),
                ("last_step", models.BigIntegerField()),
                ("first_step", models.BigIntegerField()),
                ("first_ts", models.DateTimeField()),
                ("sum", models.FloatField(null=True)),
                ("n_values", models.BigIntegerField()),
                ("count", models.BigIntegerField()),
                (
                    "series",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="rollups",
                        to="runs.metricseries",
                    ),
                ),
            ],
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
    ]
