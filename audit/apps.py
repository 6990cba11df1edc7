from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The beat task registers itself with Celery in every process.
        from audit import tasks  # noqa: F401
