from django.urls import path

from runs.web import views

urlpatterns = [
    path("", views.run_list, name="run-list"),
    path("runs/new/", views.launch_run, name="run-launch"),
    path("runs/<int:run_id>/", views.run_detail, name="run-detail"),
    path("runs/<int:run_id>/live/", views.run_fragments, name="run-fragments"),
    path("compare/", views.compare, name="run-compare"),
]
