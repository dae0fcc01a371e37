"""Django admin: dead letters and jobs, read-only, with replay/purge actions for operators."""

from django.contrib import admin, messages

from kernel.actions import ActionError
from kernel.models import Job

from . import plans, replay
from .models import DeadLetter


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ("captured_at", "stream", "stream_seq", "subject", "consumer", "message_type",
                    "reason", "status", "payload_available")
    list_filter = ("status", "reason", "stream", "consumer")
    search_fields = ("correlation_id", "message_id", "subject")
    actions = ["replay_selected", "purge_selected"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # purge through the action: it removes the stream copy and audits

    def _each(self, request, queryset, fn, verb):
        ok = failed = 0
        for letter in queryset:
            try:
                fn(request.user, letter.pk)
                ok += 1
            except ActionError as exc:
                failed += 1
                self.message_user(request, f"{letter.pk}: {exc}", messages.ERROR)
        self.message_user(request, f"{verb} {ok}, failed {failed} (audited)",
                          messages.SUCCESS if not failed else messages.WARNING)

    @admin.action(description="Replay selected dead letters to their original subjects")
    def replay_selected(self, request, queryset):
        self._each(request, queryset, lambda user, pk: replay.replay(user, pk), "replayed")

    @admin.action(description="Purge selected dead letters")
    def purge_selected(self, request, queryset):
        self._each(request, queryset, plans.purge_one, "purged")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "state", "total", "done", "failed", "created_by", "created_at")
    readonly_fields = [f.name for f in Job._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
