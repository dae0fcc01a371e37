"""Roles are Django groups; each role includes the ones below it."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from rest_framework.permissions import BasePermission

ORDER = ("viewer", "operator", "admin")


def role_of(user: AbstractBaseUser | AnonymousUser) -> str | None:
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return "admin"
    names = set(user.groups.values_list("name", flat=True))
    for role in reversed(ORDER):
        if role in names:
            return role
    return None


def has_role(user, role: str) -> bool:
    current = role_of(user)
    return current is not None and ORDER.index(current) >= ORDER.index(role)


def HasRole(role: str) -> type:  # noqa: N802 - used like a class: HasRole("viewer")
    """A DRF permission class that needs ``role``.

    DRF instantiates the classes it is given, so this builds one per role rather
    than taking the role in ``__init__``; settings name ``IsViewer`` below.
    """
    class _HasRole(BasePermission):
        message = f"This needs the {role} role."

        def has_permission(self, request, view) -> bool:
            if has_role(request.user, role):
                return True
            if request.method not in ("GET", "HEAD", "OPTIONS") and request.user.is_authenticated:
                audit_refusal(request, self.message)  # an attempt to act: audited too
            return False

    _HasRole.__name__ = _HasRole.__qualname__ = f"HasRole_{role}"
    return _HasRole


# The API's default (REST_FRAMEWORK DEFAULT_PERMISSION_CLASSES): a token or session
# of a user in no group reads nothing. Actions check their own, higher, role in the
# service layer (kernel.actions.audited).
IsViewer = HasRole("viewer")


def audit_refusal(request, why: str) -> None:
    """A logged-in user without the role tried an action (the API's permission, the pages'
    middleware): refused before any service function ran, and recorded like the
    refusals those write."""
    # Imported here: this module is loaded by settings-time code (the DRF permission
    # setting, the middleware) before the app registry can give models.
    from .models import AuditRecord

    AuditRecord.objects.create(user=request.user, username=request.user.get_username(),
                               action=f"api.{request.method.lower()}",
                               target=request.path[:512], parameters={}, outcome="refused",
                               detail=why)
