from urllib.parse import urlencode

from kernel.roles import role_of
from streams import operations


def console(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"role": None}

    operations.current_snapshot()
    return {
        "role": role_of(user),
        "live": operations.live_status(),
        # What the page's websocket should keep live (set by the view).
        "live_query": urlencode(getattr(request, "live_panel", {"panel": "status"})),
    }
