from django.urls import path

from runs.web import code, dead_letters, programs, views

urlpatterns = [
    path("", views.run_list, name="run-list"),
    path("runs/new/", views.launch_run, name="run-launch"),
    path("runs/<int:run_id>/", views.run_detail, name="run-detail"),
    path("runs/<int:run_id>/live/", views.run_fragments, name="run-fragments"),
    path("runs/<int:run_id>/clone/", code.clone_code_run, name="run-clone-code"),
    path("compare/", views.compare, name="run-compare"),
    path("programs/", programs.program_list, name="program-page-list"),
    path("programs/new/", programs.program_create, name="program-page-create"),
    path("programs/<str:name>/edit/", programs.program_edit, name="program-page-edit"),
    path("programs/<str:name>/retire/", programs.program_retire, name="program-page-retire"),
    path("dead-letters/", dead_letters.dead_letter_list, name="dead-letter-list"),
    path(
        "dead-letters/<int:run_id>/requeue/",
        dead_letters.dead_letter_requeue,
        name="dead-letter-requeue-page",
    ),
    path(
        "dead-letters/<int:run_id>/discard/",
        dead_letters.dead_letter_discard,
        name="dead-letter-discard-page",
    ),
]
