from django.urls import path

from accounts.web import views

urlpatterns = [
    path("account/tokens/", views.token_list, name="account-tokens"),
    path("account/tokens/<int:token_id>/revoke/", views.token_revoke, name="account-token-revoke"),
    path("users/", views.user_list, name="user-list"),
    path("users/<int:user_id>/", views.user_detail, name="user-detail"),
    path("users/<int:user_id>/change/", views.user_change, name="user-change"),
]
