"""Run-scoped tokens (tracking mode): a token may be bound to the one run it reports into."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_user_roles"),
    ]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="run_id",
            field=models.BigIntegerField(blank=True, db_index=True, null=True),
        ),
    ]
