from django.urls import path

from accounts.web import audit as views

urlpatterns = [
    path("", views.audit_list, name="audit-list"),
    path("verify/", views.audit_verify, name="audit-verify"),
    path("<int:pk>/", views.audit_detail, name="audit-detail"),
]
