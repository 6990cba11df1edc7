"""Runs say where their code comes from: a program, a code snapshot, or an external script."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0004_metric_rollups"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="kind",
            field=models.CharField(
                choices=[("program", "program"), ("code", "code"), ("external", "external")],
                default="program",
                max_length=16,
            ),
        ),
    ]
