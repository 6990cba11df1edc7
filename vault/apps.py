from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class VaultConfig(AppConfig):
    name = "vault"
    verbose_name = "Secrets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from vault.crypto import parse_keys

        # A malformed key list stops every process at start, not at the first secret it meets.
        try:
            parse_keys(settings.CONTROLPLANE_SECRETS_KEY)
        except ValueError as error:
            raise ImproperlyConfigured(str(error)) from None
