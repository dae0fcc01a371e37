from django.contrib import admin

from .models import Alert, Notification, Rule, Silence, Webhook


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "target", "threshold", "for_s", "severity", "enabled")
    list_editable = ("threshold", "for_s", "severity", "enabled")
    list_filter = ("kind", "severity", "enabled")


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "url", "min_severity", "enabled")


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnly):
    list_display = ("started_at", "severity", "rule", "subject", "state", "resolved_at",
                    "acknowledged_by")
    list_filter = ("state", "severity", "rule")
    search_fields = ("subject", "message")


@admin.register(Notification)
class NotificationAdmin(ReadOnly):
    list_display = ("created_at", "alert", "event", "channel", "state", "attempts", "last_error")
    list_filter = ("state", "channel", "event")


@admin.register(Silence)
class SilenceAdmin(admin.ModelAdmin):
    list_display = ("key", "until", "by", "created_at")
