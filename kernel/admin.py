from django.contrib import admin

from .models import AuditRecord


@admin.register(AuditRecord)
class AuditRecordAdmin(admin.ModelAdmin):
    """The audit log: read only, for everyone."""

    list_display = ("at", "username", "action", "target", "outcome", "detail")
    list_filter = ("outcome", "action")
    search_fields = ("username", "target", "detail")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
