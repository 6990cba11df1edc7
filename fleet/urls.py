from django.urls import path

from fleet import api

urlpatterns = [
    path("workers/", api.WorkerListView.as_view(), name="worker-list"),
    path("workers/<int:pk>/drain/", api.WorkerDrainView.as_view(), name="worker-drain"),
    path("quotas/", api.QuotaListView.as_view(), name="quota-list"),
    path("quotas/<int:pk>/", api.QuotaDetailView.as_view(), name="quota-detail"),
]
