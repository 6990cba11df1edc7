from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from accounts import roles, schema, signins  # noqa: F401 - signal receivers, OpenAPI auth extension
        from accounts.policy import check_row_rules
        from audit.chain import register_role_reader

        register_role_reader(roles.role_of)
        checks.register(check_row_rules)
