from rest_framework.routers import SimpleRouter

from audit.api.views import AuditViewSet

router = SimpleRouter()
router.register("audit", AuditViewSet, basename="audit")
urlpatterns = router.urls
