from rest_framework.routers import SimpleRouter

from vault.api import SecretViewSet

router = SimpleRouter()
router.register("secrets", SecretViewSet, basename="secret")
urlpatterns = router.urls
