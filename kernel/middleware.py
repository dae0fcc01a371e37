"""Who may see what, for every request, in one place; and the CSP's websocket source."""

from __future__ import annotations

from csp.middleware import CSPMiddleware, PolicyParts
from django.core.exceptions import DisallowedHost
from django.http import JsonResponse
from django.shortcuts import render
from django.utils.deprecation import MiddlewareMixin
from rest_framework.views import APIView

from .roles import audit_refusal, has_role

# Paths a logged-in user in no group still reaches: logging in and out, the probes
# (their own access rules: /metrics has its token, /healthz is open), static files, and
# Django's admin, which checks is_staff itself.
OPEN_PREFIXES = ("/login/", "/logout/", "/healthz", "/metrics", "/static/", "/admin/")


def _is_drf_view(view_func) -> bool:
    cls = getattr(view_func, "cls", None)
    return isinstance(cls, type) and issubclass(cls, APIView)


class RoleRequiredMiddleware(MiddlewareMixin):
    """Every page needs the viewer role (a logged-in user in no group reads nothing).

    After LoginRequiredMiddleware, which has already sent anonymous visitors to the
    login page. DRF views are left to DRF: they authenticate by token too, which only
    DRF sees, and their default permission class (``roles.IsViewer``) asks the same.
    A view marked ``login_not_required`` (health, metrics, login) needs no role either.
    Actions above reading check their own role in the service layer. (process_view
    is sync: under ASGI Django runs it in a thread, as role_of reads the database.)
    """

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith(OPEN_PREFIXES) or _is_drf_view(view_func):
            return None
        if not getattr(view_func, "login_required", True):
            return None
        user = request.user
        if not user.is_authenticated or has_role(user, "viewer"):
            return None  # anonymous: LoginRequiredMiddleware answered already
        return refusal(request, "viewer")


def refusal(request, role: str):
    """403 for a logged-in user without ``role``: JSON for the API, a page otherwise.
    An attempt to act (not a read) is audited."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        audit_refusal(request, f"This needs the {role} role.")
    message = f"This needs the {role} role; your account has no role. Ask an admin to add it."
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": message}, status=403)
    return render(request, "needs_role.html", {"needed": role}, status=403)


class ConsoleCSPMiddleware(CSPMiddleware):
    """django-csp's middleware, plus ws:// and wss:// to this very host in connect-src.

    'self' covers same-host websockets in CSP level 3 browsers; naming the host keeps
    older ones working without allowing sockets to any host (a bare ``ws:`` would).
    """

    def get_policy_parts(self, request, response, report_only: bool = False) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if report_only:
            return parts
        try:
            host = request.get_host()
        except DisallowedHost:
            return parts  # the 400 for a foreign Host header: no socket to allow
        if host.startswith("["):
            return parts  # CSP host sources cannot name IPv6 literals; 'self' covers them
        update = dict(parts.update or {})
        update["connect-src"] = [*update.get("connect-src", []), f"ws://{host}", f"wss://{host}"]
        parts.update = update
        return parts
