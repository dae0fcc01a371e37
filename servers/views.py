"""Servers and connections pages. Short views: the service layer fetches, the
templates show; ``?fragment=1`` answers the live part only (htmx polls it)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from kernel.actions import ActionError

from . import connections as conns
from . import overview

POLL_S = 3


def _fetch(fn, *args) -> tuple[object, dict]:
    """(result, {}) or (None, what to say instead: needs / error)."""
    try:
        return fn(*args), {}
    except overview.NotConfigured as exc:
        return None, {"needs": str(exc)}
    except ActionError as exc:
        return None, {"error": str(exc)}


@require_GET
def servers(request):
    rows, problem = _fetch(overview.servers)
    ctx = {"servers": rows or [], "page": "servers", "poll_s": POLL_S, **problem}
    name = "servers/servers_body.html" if request.GET.get("fragment") else "servers/servers.html"
    return render(request, name, ctx)


def _listing_args(params) -> dict:
    def whole(key: str, default: int, low: int, high: int) -> int:
        try:
            return min(high, max(low, int(params.get(key, default))))
        except ValueError:
            return default

    sort = params.get("sort", "cid")
    if sort not in conns.SORTS:
        sort = "cid"
    desc = params.get("desc")
    size = whole("size", 50, 1, 200)
    return {"q": params.get("q", "")[:200], "sort": sort,
            "desc": None if desc not in ("0", "1") else desc == "1",
            "page": whole("page", 1, 1, 100_000), "size": size}


@require_GET
def connections(request):
    args = _listing_args(request.GET)
    listing, problem = _fetch(conns.connections, args["q"], args["sort"], args["desc"],
                              (args["page"] - 1) * args["size"], args["size"])
    if listing:
        listing.update(page=args["page"], size=args["size"],
                       pages=max(1, -(-listing["total"] // args["size"])))
    else:
        listing = {**args, "desc": bool(args["desc"]), "rows": [], "total": 0, "pages": 1}
    query = urlencode({"q": listing["q"], "sort": listing["sort"],
                       "desc": "1" if listing["desc"] else "0", "size": args["size"]})
    ctx = {"listing": listing, "page": "connections", "poll_s": POLL_S, "page_query": query,
           "poll_url": f"{reverse('servers:connections')}?{query}&page={args['page']}&fragment=1",
           "sizes": overview.PAGE_SIZES, "max_scan": overview.MAX_SCAN, **problem}
    name = ("servers/connections_body.html" if request.GET.get("fragment")
            else "servers/connections.html")
    return render(request, name, ctx)
