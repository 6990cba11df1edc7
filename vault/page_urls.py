from django.urls import path

from vault import pages

urlpatterns = [
    path("", pages.secret_list, name="secret-list"),
    path("new/", pages.secret_create, name="secret-create"),
    path("<ref>/", pages.secret_edit, name="secret-edit"),
    path("<ref>/delete/", pages.secret_delete, name="secret-delete"),
]
