from django.contrib.auth import views as auth_views
from django.urls import URLPattern, URLResolver, include, path

from accounts.api.views import SchemaView
from accounts.web.signin import SignInView
from ops import health
from runs.downloads import download_artifact

api_patterns: list[URLPattern | URLResolver] = [
    path("schema/", SchemaView.as_view(), name="schema"),
    path("", include("accounts.api.urls")),
    path("", include("runs.api.urls")),
    path("", include("fleet.urls")),
    path("", include("vault.urls")),
]

# No Django admin site: it let a staff account change users, roles and flags outside the role
# model (accounts.roles) and the audit (audit.chain). Every admin function has an audited API and
# page: users (/users/), tokens, secrets, the audit log, dead letters (/dead-letters/).
urlpatterns = [
    path("", include("runs.web.urls")),
    path("", include("accounts.web.urls")),
    path("login/", SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("secrets/", include("vault.page_urls")),
    path("workers/", include("fleet.page_urls")),
    path("audit/", include("accounts.web.audit_urls")),
    path("api/v1/", include((api_patterns, "api"))),
    path("api/v1/artifacts/<int:artifact_id>/download/", download_artifact, name="artifact-download"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("", include("django_prometheus.urls")),
]

handler400 = "ops.errors.bad_request"
handler403 = "ops.errors.permission_denied"
handler404 = "ops.errors.page_not_found"
handler500 = "ops.errors.server_error"
