from django.urls import include, path
from rest_framework.routers import SimpleRouter

from runs.api.views import DeadLetterViewSet, RunViewSet

router = SimpleRouter()
router.register("runs", RunViewSet, basename="run")
router.register("dead-letters", DeadLetterViewSet, basename="dead-letter")

urlpatterns = [path("", include(router.urls))]
