"""Small display helpers. Nothing here marks bus data safe: only numbers are
put into markup by ``sparkline``; everything else is escaped by templates."""

from __future__ import annotations

from django import template
from django.utils.html import format_html
from django.utils.safestring import mark_safe

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


@register.simple_tag
def sparkline(points, width: int = 80, height: int = 18):
    values = [float(p or 0) for p in (points or [])]
    if len(values) < 2:
        return ""
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    coords = " ".join(f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}"
                      for i, v in enumerate(values))
    return mark_safe(  # noqa: S308 - numbers only
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.2" points="{coords}"/></svg>')


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
    from datetime import UTC, datetime

    if epoch is None:
        return "–"
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%H:%M:%S")
