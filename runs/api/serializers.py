from __future__ import annotations

from typing import Any

from django.urls import reverse
from rest_framework import serializers

from runs import launch_hooks
from runs.models import Artifact, LogLine, Run, RunAttempt


def prefill_placements(runs: list[Run]) -> None:
    """Read the fleet placement of every run of a page at once (runs.launch_hooks)."""
    found = launch_hooks.placements_of([run for run in runs if not hasattr(run, "_placement_cache")])
    for run in runs:
        if run.pk in found:
            run._placement_cache = found[run.pk]  # type: ignore[attr-defined]


class RunListSerializer(serializers.ListSerializer[Run]):
    def to_representation(self, data: Any) -> list[Any]:
        runs = list(data.all() if hasattr(data, "all") else data)
        prefill_placements(runs)
        return super().to_representation(runs)


class RunSerializer(serializers.ModelSerializer[Run]):
    owner = serializers.CharField(source="owner.username", read_only=True)
    error = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()
    assigned = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField()
    waiting_reason = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id",
            "name",
            "status",
            "kind",
            "program",
            "params",
            "snapshot",
            "command",
            "secrets",
            "owner",
            "attempt",
            "max_attempts",
            "max_duration_seconds",
            "queue_ttl_seconds",
            "queue",
            "phase",
            "device",
            "progress",
            "worker",
            "exit_code",
            "error",
            "created_at",
            "enqueued_at",
            "started_at",
            "finished_at",
            "updated_at",
            "resources",
            "priority",
            "preemptible",
            "preempt_count",
            "assigned",
            "waiting_reason",
            "queue_position",
            "links",
        ]
        read_only_fields = fields
        list_serializer_class = RunListSerializer

    def _placement(self, run: Run) -> dict[str, Any]:
        if not hasattr(run, "_placement_cache"):
            prefill_placements([run])
        cached: dict[str, Any] = run._placement_cache  # type: ignore[attr-defined]
        return cached

    def get_assigned(self, run: Run) -> dict[str, Any] | None:
        """The worker and devices the fleet reserved for the run (runs.launch_hooks)."""
        assigned: dict[str, Any] | None = self._placement(run)["assigned"]
        return assigned

    def get_queue_position(self, run: Run) -> int | None:
        """Runs ahead of it in its pool, counted when read; None unless it waits for admission."""
        position: int | None = self._placement(run)["queue_position"]
        return position

    def get_waiting_reason(self, run: Run) -> str:
        """The stored reason (quota, no worker, too big), else its place in the queue, in words."""
        return launch_hooks.waiting_reason(run, self.get_queue_position(run))

    def get_error(self, run: Run) -> dict[str, str] | None:
        if not run.error_kind:
            return None
        return {"kind": run.error_kind, "code": run.error_code, "message": run.error_message}

    def get_progress(self, run: Run) -> dict[str, int | None] | None:
        if run.progress_step is None:
            return None
        return {"step": run.progress_step, "total": run.progress_total}

    def get_links(self, run: Run) -> dict[str, str]:
        return {
            "self": reverse("api:run-detail", args=[run.pk]),
            "logs": reverse("api:run-logs", args=[run.pk]),
            "metrics": reverse("api:run-metrics", args=[run.pk]),
            "artifacts": reverse("api:run-artifacts", args=[run.pk]),
            "cancel": reverse("api:run-cancel", args=[run.pk]),
            "retry": reverse("api:run-retry", args=[run.pk]),
            "websocket": f"/ws/runs/{run.pk}/",
        }


class LogLineSerializer(serializers.ModelSerializer[LogLine]):
    class Meta:
        model = LogLine
        fields = ["seq", "ts", "stream", "line"]


class ArtifactSerializer(serializers.ModelSerializer[Artifact]):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = ["id", "name", "kind", "size", "sha256", "download_url", "created_at", "attempt", "metadata"]

    def get_download_url(self, artifact: Artifact) -> str:
        request: Any = self.context.get("request")
        path = reverse("artifact-download", args=[artifact.pk])
        return str(request.build_absolute_uri(path)) if request is not None else path


class LaunchSerializer(serializers.Serializer[Any]):
    """Only documents the launch body for the OpenAPI schema; validation is in services."""

    name = serializers.CharField(max_length=200)
    program = serializers.CharField()
    params = serializers.DictField(required=False)
    secrets = serializers.ListField(child=serializers.CharField(), required=False)
    max_attempts = serializers.IntegerField(required=False, min_value=1, max_value=20)
    max_duration_seconds = serializers.IntegerField(required=False, min_value=1)
    queue_ttl_seconds = serializers.IntegerField(required=False, min_value=1)


class RunAttemptSerializer(serializers.ModelSerializer[RunAttempt]):
    class Meta:
        model = RunAttempt
        fields = [
            "number",
            "worker",
            "started_at",
            "finished_at",
            "status",
            "resumed_from_step",
            "exit_code",
            "error_kind",
            "error_code",
            "error_message",
        ]


class DeadLetterSerializer(RunSerializer):
    attempts = RunAttemptSerializer(many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "attempts", "discarded_at"]
        read_only_fields = fields
