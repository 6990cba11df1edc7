from django.urls import path

from fleet import web

urlpatterns = [
    path("", web.worker_list, name="worker-page-list"),
    path("<int:pk>/drain/", web.worker_drain, name="worker-page-drain"),
]
