"""Small display helpers. Nothing here marks bus data safe: only numbers are
put into markup by ``sparkline``; everything else is escaped by templates."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime

from django import template
from django.utils.html import conditional_escape, format_html
from django.utils.timezone import now as django_now

from alerts.thresholds import level as judge

register = template.Library()


@register.filter
def rate(value) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}/s"
    return f"{value:,.1f}/s"


@register.filter
def duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    if seconds < 1:
        return "0s" if seconds == 0 else f"{seconds * 1000:.0f}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@register.filter
def count(value) -> str:
    if value is None:
        return "–"
    if value < 0:
        return "∞"
    return f"{value:,}"


@register.filter
def get(mapping, key):
    try:
        return mapping.get(key)
    except AttributeError:
        return None


def _figure(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or v == int(v) else f"{v:,.1f}"


@register.simple_tag
def sparkline(points, width: int = 80, height: int = 18, label: str = ""):
    """A line of the last points; hovering says now/min/max. With a ``label`` (the
    overview's trends) the current value and the scale are written beside it too, and a
    short history says how many samples there are rather than drawing nothing."""
    values = [float(p or 0) for p in (points or [])]
    if len(values) < 2:
        if not label:
            return ""
        return format_html('<span class="spark-empty muted">collecting: {} sample{} so far</span>',
                           len(values), "" if len(values) == 1 else "s")
    top, low = max(values), min(values)
    scale = top or 1.0
    step = width / (len(values) - 1)
    coords = " ".join(f"{i * step:.1f},{height - (v / scale) * (height - 2) - 1:.1f}"
                      for i, v in enumerate(values))
    hover = format_html("{}now {} · min {} · max {} ({} samples)", f"{label}: " if label else "",
                        _figure(values[-1]), _figure(low), _figure(top), len(values))
    svg = format_html(
        '<svg class="spark" width="{}" height="{}" viewBox="0 0 {} {}" role="img"><title>{}</title>'
        '<polyline fill="none" stroke="currentColor" stroke-width="1.2" points="{}"/></svg>',
        width, height, width, height, hover, coords)
    if not label:
        return format_html('<span class="spark-wrap" title="{}">{}</span>', hover, svg)
    return format_html('<span class="spark-wrap" title="{}"><b class="spark-now">{}</b>{}'
                       '<small class="spark-scale muted">{}–{}</small></span>',
                       hover, _figure(values[-1]), svg, _figure(low), _figure(top))


@register.simple_tag(takes_context=True)
def sort_link(context, field: str, label: str):
    page = context["listing"]
    desc = not page["desc"] if page["sort"] == field else field != "name"
    arrow = ("▼" if page["desc"] else "▲") if page["sort"] == field else ""
    return format_html('<a href="?q={}&sort={}&desc={}">{}{}</a>', page["q"], field,
                       "1" if desc else "0", label, arrow)


@register.filter
def clock(epoch) -> str:
    """Epoch seconds -> HH:MM:SS UTC."""
    if epoch is None:
        return "–"
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%H:%M:%S")


# ------------------------------------------------------------------ times and ids
#
# Bus times arrive as datetimes, ISO strings (JetStream's carry nanoseconds, and its zero
# time is year 1), epoch numbers in s, ms, µs or ns, or garbage. A page must never fail on
# one: what cannot be read is shown as given (escaped), never raised.

_ISO = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d(?::\d\d)?)(?:[.,](\d+))?\s*(Z|[+-]\d\d:?\d\d)?$")


def _parse_time(value) -> tuple[datetime, str] | None:
    """(aware UTC datetime, exact UTC text with every fraction digit it had) or None."""
    try:
        if isinstance(value, datetime):
            when = value if value.tzinfo else value.replace(tzinfo=UTC)
            when = when.astimezone(UTC)
            return when, when.strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0").rstrip(".") + " UTC"
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
            value = float(value)
        if isinstance(value, (int, float)):
            seconds = float(value)
            if not math.isfinite(seconds) or seconds <= 0:
                return None
            # Seconds past 1e11 would be the year 5138: such numbers are ns, µs or ms.
            for above, scale in ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3)):
                if seconds > above:
                    seconds /= scale
                    break
            when = datetime.fromtimestamp(seconds, UTC)
            return when, when.strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0").rstrip(".") + " UTC"
        if not isinstance(value, str):
            return None
        m = _ISO.match(value.strip())
        if not m:
            return None
        day, clock_, fraction, zone = m.groups()
        if len(clock_) == 5:
            clock_ += ":00"
        zone = "+00:00" if zone in (None, "Z") else (zone if ":" in zone else zone[:3] + ":" + zone[3:])
        when = datetime.fromisoformat(f"{day}T{clock_}.{(fraction or '0')[:6].ljust(6, '0')}{zone}")
        when = when.astimezone(UTC)
        if when.year < 1971:  # JetStream's "no time" (0001-01-01T00:00:00Z)
            return None
        exact = when.strftime("%Y-%m-%d %H:%M:%S")
        if fraction and zone == "+00:00" and fraction.strip("0"):
            exact += "." + fraction.rstrip("0")  # all of the bus's digits, nanoseconds too
        elif when.microsecond:
            exact += when.strftime(".%f").rstrip("0")
        return when, exact + " UTC"
    except (ValueError, OverflowError, OSError, TypeError):
        return None


def relative(seconds: float) -> str:
    """A past interval as an on-call engineer says it: 42 s, 3 min, 2 h 5 min, 3 d."""
    future = seconds < -1
    s = abs(seconds)
    if s < 1:
        return "just now"
    if s < 60:
        text = f"{s:.0f} s"
    elif s < 3600:
        text = f"{s // 60:.0f} min"
    elif s < 86400:
        h, m = divmod(s // 60, 60)
        text = f"{h:.0f} h" + (f" {m:.0f} min" if m and h < 10 else "")
    else:
        text = f"{s // 86400:.0f} d"
    return f"in {text}" if future else f"{text} ago"


def _shown(value, limit: int) -> str:
    """Bus data as text for a cell, clipped; a value even str() fails on (a list nested past
    the recursion limit) as a marker."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        text = "(unreadable)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _time_tag(value, text_of) -> str:
    parsed = _parse_time(value)
    if parsed is None:
        if value in (None, "") or isinstance(value, (int, float)) or _shown(value, 8).startswith("0001-"):
            return "–"  # no time: JetStream's zero time, 0, NaN
        return conditional_escape(_shown(value, 64))
    when, exact = parsed
    iso = when.isoformat().replace("+00:00", "Z")
    if text_of is None:
        return format_html('<time datetime="{}" title="{}" data-rel>{}</time>', iso, exact,
                           relative((django_now() - when).total_seconds()))
    return format_html('<time datetime="{}" title="{}">{}</time>', iso, exact, text_of(when))


@register.filter
def ago(value) -> str:
    """``<time>`` saying how long ago (kept current by static/lucent/live.js), the exact UTC
    time on hover. Anything unreadable is shown as it came, escaped."""
    return _time_tag(value, None)


@register.filter
def at(value) -> str:
    """``<time>`` with the UTC clock time (feeds, where the order matters more than the
    age), the exact time with its date on hover."""
    return _time_tag(value, lambda when: when.strftime("%H:%M:%S"))


@register.filter
def ident(value, chars: int = 16) -> str:
    """An id cut to ``chars`` for the table, whole on hover, copied whole on click
    (static/lucent/live.js: elements with data-copy)."""
    text = "" if value is None else _shown(value, 1000)
    if not text:
        return "–"
    shown = text if len(text) <= chars else text[: max(1, chars - 1)] + "…"
    return format_html('<code class="id" title="{} (click to copy)" data-copy="{}">{}</code>',
                       text, text, shown)


@register.filter
def pairs(value) -> list[tuple[str, str]]:
    """Audit parameters (a JSON object) as (key, readable value) rows; anything else as one
    row, so an odd record still shows what it holds."""
    if isinstance(value, dict):
        out = []
        for key, v in value.items():
            if v is None:
                v = "–"
            elif isinstance(v, bool):
                v = "yes" if v else "no"
            out.append((_shown(key, 200), _shown(v, 2000)))
        return out
    if value in (None, "", [], {}):
        return []
    return [("", _shown(value, 2000))]


# ------------------------------------------------------------------ status colours
#
# One mapping for every page: a figure is coloured by the enabled alert rules'
# thresholds (alerts.thresholds), so amber and red on a page mean what the alert list
# means. Returns "ok", "warn" or "crit"; console.css colours ".lvl-ok/-warn/-crit".


@register.simple_tag
def level(kind: str, value, subject=None, limit=None) -> str:
    try:
        return judge(kind, value, subject, limit)
    except (TypeError, ValueError):  # a figure the bus sent as garbage: no colour
        return "ok"


# Words a service uses for its healthy state: a line saying the breaker is CLOSED again
# reports a recovery, whatever severity the service sent it with.
_RECOVERED = re.compile(r"\b(breaker\s+closed|recovered|resolved|healthy again|back up)\b", re.IGNORECASE)


@register.filter
def event_level(event) -> str:
    """"ok", "warn" or "crit" for a service's alert line."""
    message = str(getattr(event, "message", "") or "")
    if _RECOVERED.search(message):
        return "ok"
    severity = str(getattr(event, "severity", "") or "").lower()
    return {"critical": "crit", "error": "crit", "fatal": "crit",
            "warning": "warn", "warn": "warn"}.get(severity, "ok")
