from django.urls import include, path
from rest_framework.routers import SimpleRouter

from runs.api import dashboard, programs, snapshots, tracking
from runs.api.views import DeadLetterViewSet, RunViewSet

router = SimpleRouter()
router.register("runs", RunViewSet, basename="run")
router.register("dead-letters", DeadLetterViewSet, basename="dead-letter")

urlpatterns = [
    path("", include(router.urls)),
    # Dashboard reads (runs/api/dashboard.py); none collides with the router's numeric run ids.
    path("snapshots/limits/", snapshots.SnapshotLimitsView.as_view(), name="snapshot-limits"),
    path("snapshots/<str:sha256>/", snapshots.SnapshotView.as_view(), name="snapshot-detail"),
    path("programs/", programs.ProgramListView.as_view(), name="program-list"),
    path("programs/infer-schema/", programs.ProgramInferSchemaView.as_view(), name="program-infer-schema"),
    path("programs/<str:name>/", programs.ProgramDetailView.as_view(), name="program-detail"),
    path("programs/<str:name>/retire/", programs.ProgramRetireView.as_view(), name="program-retire"),
    path("programs/<str:name>/restore/", programs.ProgramRestoreView.as_view(), name="program-restore"),
    # Tracking mode (runs/api/tracking.py): reports and artifact uploads into an external run.
    path("runs/<int:run_id>/report/", tracking.ReportView.as_view(), name="run-report"),
    path(
        "runs/<int:run_id>/artifacts/<str:name>",
        tracking.ArtifactUploadView.as_view(),
        name="run-artifact-upload",
    ),
    path("runs/states/", dashboard.RunStatesView.as_view(), name="run-states"),
    path("runs/<int:run_id>/logs/tail/", dashboard.LogTailView.as_view(), name="run-log-tail"),
    path("runs/<int:run_id>/logs.txt", dashboard.log_text, name="run-log-text"),
    path("runs/<int:run_id>/charts/", dashboard.ChartsView.as_view(), name="run-charts"),
    path("runs/<int:run_id>/metrics/export/", dashboard.metric_export, name="run-metric-export"),
    path(
        "artifacts/<int:artifact_id>/preview/",
        dashboard.ArtifactPreviewView.as_view(),
        name="artifact-preview",
    ),
]
