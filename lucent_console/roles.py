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
