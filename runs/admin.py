"""Admin pages: runs with their attempts, and the dead-letter list with requeue and discard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from runs import services
from runs.models import Run, RunAttempt, RunStatus

if TYPE_CHECKING:
    # Django's admin classes are generic only in the type stubs.
    RunAttemptInlineBase = admin.TabularInline[RunAttempt, Run]
    RunAdminBase = admin.ModelAdmin[Run]
else:
    RunAttemptInlineBase = admin.TabularInline
    RunAdminBase = admin.ModelAdmin


class RunAttemptInline(RunAttemptInlineBase):
    model = RunAttempt
    extra = 0
    can_delete = False
    fields = (
        "number",
        "worker",
        "started_at",
        "finished_at",
        "status",
        "resumed_from_step",
        "error_kind",
        "error_code",
        "error_message",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeadLetterFilter(admin.SimpleListFilter):
    title = "dead letters"
    parameter_name = "dead_letter"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("open", "Open dead letters"), ("discarded", "Discarded")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        if self.value() == "open":
            return queryset.filter(status=RunStatus.DEAD, discarded_at__isnull=True)
        if self.value() == "discarded":
            return queryset.filter(status=RunStatus.DEAD, discarded_at__isnull=False)
        return queryset


@admin.register(Run)
class RunAdmin(RunAdminBase):
    list_display = [
        "id",
        "name",
        "program",
        "status",
        "attempt",
        "max_attempts",
        "error_kind",
        "owner",
        "created_at",
    ]
    list_filter = [DeadLetterFilter, "status", "error_kind", "program"]
    search_fields = ["name", "owner__username"]
    inlines = [RunAttemptInline]
    actions = ["requeue_dead_letters", "discard_dead_letters"]
    readonly_fields = tuple(field.name for field in Run._meta.fields)
    list_select_related = ["owner"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Requeue the selected dead letters (resume from their newest checkpoint)")
    def requeue_dead_letters(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        self._apply(request, queryset, services.do_requeue_dead_run, "requeued")

    @admin.action(description="Discard the selected dead letters")
    def discard_dead_letters(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        self._apply(request, queryset, services.do_discard_dead_run, "discarded")

    def _apply(self, request: HttpRequest, queryset: QuerySet[Run], action: Any, verb: str) -> None:
        done = 0
        for run in queryset:
            try:
                action(run, actor=request.user)
                done += 1
            except services.DeadLetterError as error:
                self.message_user(request, str(error), messages.WARNING)
        self.message_user(request, f"{done} run(s) {verb}.", messages.SUCCESS)
