"""Tracking mode: the last report batch applied to an external run, for idempotent retries."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0007_program_catalog"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="report_seq",
            field=models.BigIntegerField(default=0),
        ),
    ]
