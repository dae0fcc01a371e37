"""Guessing credentials: API tokens throttled per address; the login lockout's page.

Password guessing at /login/ (and /admin/login/) is django-axes' (settings: AXES_*).
Tokens never pass through ``authenticate()``, so axes does not see them: DRF
authenticates before it throttles, so the throttle sits in the authentication class.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache
from django.shortcuts import render
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled


def client_ip(request) -> str:
    # REMOTE_ADDR only: behind the proxy, uvicorn (--forwarded-allow-ips) has already put
    # the client's address there; X-Forwarded-For as sent by anyone must not count.
    return request.META.get("REMOTE_ADDR") or "unknown"


class ThrottledTokenAuthentication(TokenAuthentication):
    """TokenAuthentication that refuses an address after too many bad tokens.

    ``LUCENT_TOKEN_FAILURES`` bad tokens from one address within
    ``LUCENT_TOKEN_FAILURE_WINDOW_S`` seconds (a window opened by the first) and every
    token from it answers 429 until the window ends, good ones included: answering a
    good token normally would still tell the guesser when it had guessed right. Counted
    in the cache, which is shared by the web processes (Redis with REDIS_URL).
    """

    def authenticate(self, request):
        if not self._offers_token(request):
            return None  # session or anonymous: nothing to count
        key = f"lucent:bad-token:{client_ip(request)}"
        limit = settings.LUCENT_TOKEN_FAILURES
        window = settings.LUCENT_TOKEN_FAILURE_WINDOW_S
        if (cache.get(key) or 0) >= limit:
            raise Throttled(wait=window, detail="Too many bad API tokens from this address.")
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            cache.add(key, 0, timeout=window)  # opens the window; no-op when open
            try:
                cache.incr(key)  # atomic in Redis and locmem: concurrent failures all count
            except ValueError:
                cache.set(key, 1, timeout=window)  # expired between add and incr
            raise

    def _offers_token(self, request) -> bool:
        header = get_authorization_header(request).split()  # as TokenAuthentication reads it
        return bool(header) and header[0].lower() == self.keyword.lower().encode()


def lockout_response(request, original_response=None, credentials=None):
    """What axes answers a locked-out login (AXES_LOCKOUT_CALLABLE): a console page,
    429, saying for how long, rather than axes' bare text."""
    minutes = settings.LUCENT_LOGIN_LOCKOUT_MINUTES
    return render(request, "needs_role.html", {"locked_out": True, "minutes": minutes},
                  status=429)
