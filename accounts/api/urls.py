from django.urls import include, path
from rest_framework.routers import SimpleRouter

from accounts.api.audit import AuditViewSet
from accounts.api.views import TokenView, TokenViewSet, UserViewSet, WhoAmIView

router = SimpleRouter()
router.register("tokens", TokenViewSet, basename="token")
router.register("users", UserViewSet, basename="user")
router.register("audit", AuditViewSet, basename="audit")

urlpatterns = [
    path("auth/token/", TokenView.as_view(), name="auth-token"),
    path("auth/whoami/", WhoAmIView.as_view(), name="auth-whoami"),
    path("", include(router.urls)),
]
