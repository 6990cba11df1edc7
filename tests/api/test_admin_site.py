"""No side door: Django's admin site is gone, and no URL changes a role outside the audited paths."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.models import Role
from audit.models import AuditRecord
from tests.conftest import ROOT, make_user

# Where every view of the product lives: our own packages (each top-level package of the
# repository), Django's sign-in views and the metrics endpoint. A URL served from anywhere else (a
# third-party CRUD site such as django.contrib.admin) would act outside the role model and audit.
OUR_PACKAGES = tuple(
    f"{path.parent.name}." for path in ROOT.glob("*/__init__.py") if path.parent.name != "tests"
)
OUR_VIEWS = (*OUR_PACKAGES, "django.contrib.auth.views", "django_prometheus.")


def _callbacks(patterns: list[Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found += _callbacks(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            callback = pattern.callback
            module = getattr(callback, "cls", callback).__module__
            found.append((str(pattern.pattern), module))
    return found


@pytest.mark.django_db
def test_the_django_admin_site_is_not_served(admin_user: User) -> None:
    browser = Client()
    browser.force_login(admin_user)
    for url in ("/admin/", "/admin/login/", "/admin/auth/user/", f"/admin/auth/user/{admin_user.pk}/change/"):
        assert browser.get(url).status_code == 404, url


def test_every_url_is_served_by_our_own_views() -> None:
    foreign = [
        (url, module)
        for url, module in _callbacks(get_resolver().url_patterns)
        if not module.startswith(OUR_VIEWS)
    ]
    assert foreign == []


@pytest.mark.django_db
def test_a_role_change_through_the_page_is_audited(admin_user: User) -> None:
    vera = make_user("vera", "viewer")
    browser = Client()
    browser.force_login(admin_user)
    response = browser.post(f"/users/{vera.pk}/change/", {"change": "role", "role": Role.OPERATOR})
    assert response.status_code == 302
    vera.refresh_from_db()
    assert vera.role_record.role == Role.OPERATOR
    assert AuditRecord.objects.filter(action="user.role_change", target_id=str(vera.pk)).exists()
