from django.urls import include, path
from rest_framework.routers import SimpleRouter

from runs.api.views import RunViewSet

router = SimpleRouter()
router.register("runs", RunViewSet, basename="run")

urlpatterns = [path("", include(router.urls))]
