"""``{% trace_link correlation_id %}``: a correlation id, linked to its trace when a page
can show it (bus data: an id too long or with a line break gets no link, not an error)."""

from django import template
from django.urls import NoReverseMatch, reverse

from kernel.actions import ActionError

from ..trace import clean_id

register = template.Library()


@register.filter
def trace_url(correlation_id) -> str:
    try:
        return reverse("traces:detail", args=[clean_id(correlation_id)])
    except (ActionError, NoReverseMatch):
        return ""


@register.inclusion_tag("fragments/trace_link.html")
def trace_link(correlation_id, chars: int = 0) -> dict:
    return {"url": trace_url(correlation_id), "cid": correlation_id, "chars": chars}
