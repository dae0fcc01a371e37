"""Roles are Django groups; each role includes the ones below it."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

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
    from rest_framework.permissions import BasePermission

    class _HasRole(BasePermission):
        message = f"This needs the {role} role."

        def has_permission(self, request, view) -> bool:
            return has_role(request.user, role)

    _HasRole.__name__ = _HasRole.__qualname__ = f"HasRole_{role}"
    return _HasRole


# The API's default (REST_FRAMEWORK DEFAULT_PERMISSION_CLASSES): a token or session
# of a user in no group reads nothing. Actions check their own, higher, role in the
# service layer (kernel.actions.audited).
IsViewer = HasRole("viewer")
