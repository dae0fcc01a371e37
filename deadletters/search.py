"""Finding dead letters: filters (checked), the filtered query, groups, one letter and
its stored copy (read back only from its own DEAD_LETTERS generation).
"""

from __future__ import annotations

import re
from functools import cached_property

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Count, Q
from django.db.models.functions import Collate

from kernel import times
from kernel.actions import ActionError, NotFound
from lucent_bus import deadletters as dl
from lucent_bus import envelope, subjects
from lucent_bus import jetstream as js
from lucent_bus import sync as bus_sync

from .models import DeadLetter

FILTERS = ("stream", "consumer", "subject", "message_type", "correlation_id", "reason", "status",
           "since", "until", "q")

# A selection of rows (the list's checkboxes) travels as ``ids``: bounded, so a posted
# selection cannot turn into a query of unbounded size.
MAX_IDS = 1000

# Counts stop here (the page says "10,000+"): counting is reading one index entry per
# match, so a count costs at most this many (at 100,000 a count took 60-120 ms over 1 M
# rows on a busy machine: bench/deadletter_search.py). Free text (``q``) is a substring
# test of each row's text; it stops at the same number. Exact counts (a bulk action's
# dry run) are plans.py's.
COUNT_CAP = 10_000
TEXT_COUNT_CAP = 10_000
# A wildcard subject is matched against the distinct subjects under its literal prefix
# (read from the subject index, one step per subject); beyond this many the filter is a
# regular expression on every row under the prefix again: slower, the same rows.
WILDCARD_SUBJECTS = 2_000



def _nats_pattern_to_regex(pattern: str) -> str:
    parts = []
    for token in pattern.split("."):
        parts.append("[^.]+" if token == "*" else ".+" if token == ">" else re.escape(token))
    return "^" + r"\.".join(parts) + "$"




def clean_filters(params) -> dict:
    """The filters given, checked: bad values are a clear error.

    ``subject_filter`` is another name for ``subject``: a bulk replay's
    ``subject`` is where to replay to, so its filter on the original subject
    goes by that name.
    """
    out = {}
    for key in FILTERS:
        value = params.get(key)
        if key == "subject" and params.get("subject_filter"):
            value = params.get("subject_filter")
        if value in (None, ""):
            continue
        value = str(value).strip()
        if key == "subject" and not subjects.is_valid(value):
            raise ActionError(f"{value[:80]!r} is not a valid subject")
        if key == "status" and value not in dict(DeadLetter.STATUSES):
            raise ActionError(f"status must be one of new, replayed, purged, not {value[:20]!r}")
        if key in ("since", "until"):
            times.parse(value, key)
        out[key] = value
    ids = _clean_ids(params)
    if ids:
        out["ids"] = ids
    return out


def _clean_ids(params) -> list[int]:
    """The ``ids`` filter: repeated fields (a form's checkboxes), a list (JSON, a job's
    frozen filters) or comma-separated text; each a positive integer, sorted, unique."""
    if hasattr(params, "getlist"):
        raw = params.getlist("ids")
    else:
        raw = params.get("ids")
        raw = [] if raw in (None, "") else raw if isinstance(raw, (list, tuple)) else [raw]
    values = []
    for item in raw:
        values.extend(str(item).split(",") if isinstance(item, str) else [item])
    out = set()
    for value in values:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                continue
        # bool is an int to Python, never an id.
        if isinstance(value, bool) or not (isinstance(value, int) or (
                isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18)):
            raise ActionError(f"ids must be dead-letter ids (whole numbers), not {str(value)[:20]!r}")
        if int(value) < 1:
            raise ActionError("ids must be dead-letter ids (whole numbers above 0)")
        out.add(int(value))
    if len(out) > MAX_IDS:
        raise ActionError(f"ids: at most {MAX_IDS} at once, not {len(out)}")
    return sorted(out)



def filtered(filters: dict):
    qs = DeadLetter.objects.all()
    if filters.get("ids"):
        qs = qs.filter(pk__in=filters["ids"])
    for key in ("stream", "consumer", "message_type", "correlation_id", "reason"):
        if filters.get(key):
            qs = qs.filter(**{key: filters[key]})
    if filters.get("subject"):
        qs = subject_filter(qs, filters["subject"])
    if filters.get("status"):
        qs = qs.filter(status=filters["status"])
    else:
        qs = qs.exclude(status=DeadLetter.PURGED)
    if filters.get("since"):
        qs = qs.filter(captured_at__gte=times.parse(filters["since"], "since"))
    if filters.get("until"):
        qs = qs.filter(captured_at__lt=times.parse(filters["until"], "until"))
    if filters.get("q"):
        q = filters["q"]
        qs = qs.filter(Q(search_text__icontains=q) | Q(error__icontains=q) | Q(message_id=q))
    return qs



def subject_filter(qs, pattern: str):
    """``qs`` narrowed to subjects matching the NATS ``pattern`` by index lookups:
    ``a.b.>`` is the range of subjects starting ``a.b.``; any other wildcard is the
    distinct subjects under its literal prefix that match, looked up by equality. The
    same rows as a regular expression over every subject."""
    if "*" not in pattern and ">" not in pattern:
        return qs.filter(subject=pattern)
    literal = []
    for token in pattern.split("."):
        if token in ("*", ">"):
            break
        literal.append(token)
    prefix = ".".join(literal) + "." if literal else ""
    if prefix and pattern == prefix + ">":
        return _under(qs, prefix).exclude(subject=prefix)
    found = distinct_subjects(prefix, WILDCARD_SUBJECTS + 1, qs.db)
    regex = re.compile(_nats_pattern_to_regex(pattern), re.DOTALL)
    if len(found) <= WILDCARD_SUBJECTS:
        return qs.filter(subject__in=[s for s in found if regex.search(s)])
    # Too many distinct subjects to list: a regular expression on each row under the prefix.
    return (_under(qs, prefix) if prefix else qs).filter(subject__regex=regex.pattern)


def _under(qs, prefix: str):
    """Rows whose subject starts with ``prefix`` (ending in "."): a range of the subject
    index, "." to "/" being neighbours in byte order (PostgreSQL: COLLATE "C", so the
    database's collation does not matter; migration 0003's index)."""
    upper = prefix[:-1] + "/"
    if connections[qs.db].vendor == "postgresql":
        return qs.alias(subject_c=Collate("subject", "C")).filter(subject_c__gte=prefix,
                                                                 subject_c__lt=upper)
    return qs.filter(subject__gte=prefix, subject__lt=upper)


def distinct_subjects(prefix: str, limit: int, using: str = "default") -> list[str]:
    """Up to ``limit`` distinct subjects starting with ``prefix`` (all when ""), in byte
    order, purged letters' included: each is one step down the subject index (a loose
    index scan), so this costs the number of distinct subjects, not of rows."""
    connection = connections[using]
    col = 'subject COLLATE "C"' if connection.vendor == "postgresql" else "subject"
    table = connection.ops.quote_name(DeadLetter._meta.db_table)
    upper = prefix[:-1] + "/" if prefix else None
    bound = f" AND {col} < %s" if upper else ""
    sql = (f"WITH RECURSIVE s(v, n) AS ("
           f"SELECT (SELECT MIN({col}) FROM {table} WHERE {col} >= %s{bound}), 1 "
           f"UNION ALL SELECT (SELECT MIN({col}) FROM {table} WHERE {col} > s.v{bound}), n + 1 "
           f"FROM s WHERE s.v IS NOT NULL AND n < %s) SELECT v FROM s WHERE v IS NOT NULL")
    params = [prefix, *([upper] if upper else []), *([upper] if upper else []), limit]
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return [row[0] for row in cur.fetchall()]


def count(qs, filters: dict) -> tuple[int, bool]:
    """How many rows ``qs`` (``filtered(filters)``) holds, up to its cap: (count, capped).
    ``capped`` means "at least this many": the count stopped at the cap."""
    cap = TEXT_COUNT_CAP if filters.get("q") else COUNT_CAP
    n = qs.order_by().values("status")[:cap + 1].count()
    return min(n, cap), n > cap


class CappedPaginator(Paginator):
    """A Paginator whose count stops at the cap (``count``): ``capped`` says it did,
    ``shown`` is the count as the page says it ("10,000+")."""

    def __init__(self, qs, per_page: int, filters: dict):
        super().__init__(qs, per_page)
        self.filters, self.capped = filters, False

    @cached_property
    def count(self) -> int:
        n, self.capped = count(self.object_list, self.filters)
        return n

    @property
    def shown(self) -> str:
        return f"{self.count:,}" + ("+" if self.capped else "")


def groups(qs, limit: int = 8) -> list[dict]:
    """Counts by message type, consumer and reason: a flood at a glance."""
    rows = (qs.order_by().values("message_type", "consumer", "reason")
            .annotate(n=Count("id")).order_by("-n")[:limit])
    return list(rows)



def get(dl_id) -> DeadLetter:
    try:
        return DeadLetter.objects.get(pk=int(dl_id))
    except (ValueError, TypeError, DeadLetter.DoesNotExist):
        raise NotFound(f"no dead letter {str(dl_id)[:20]!r}") from None



def load(letter: DeadLetter) -> dict:
    """The stored copy: headers, payload and its decoding (from DEAD_LETTERS)."""
    if letter.status == DeadLetter.PURGED:
        return {"available": False, "why": "purged"}
    async def read(nc):
        return await js.next_message(nc, dl.STREAM, letter.dl_seq), await current_generation(nc)

    try:
        msg, generation = bus_sync.with_client(read)
    except Exception as exc:
        return {"available": False, "why": f"cannot read DEAD_LETTERS: {exc}"}
    if msg is None or msg["seq"] != letter.dl_seq:
        return {"available": False, "why": "no longer in DEAD_LETTERS"}
    if not same_letter(letter.generation, letter.stream, letter.stream_seq, msg, generation):
        return {"available": False, "why": "no longer available: it was stored in an earlier "
                "DEAD_LETTERS stream (declared again since, or another bus)"}
    return {"available": letter.payload_available, "headers": msg["headers"], "data": msg["data"],
            "decoded": envelope.decode(msg["data"], msg["headers"]),
            "why": "" if letter.payload_available else
            "payload unavailable: the original was gone when the failure was captured"}


async def current_generation(nc) -> str:
    return dl.generation(await js.stream_info(nc, dl.STREAM))



def same_letter(generation: str, stream: str, stream_seq, msg: dict, current: str) -> bool:
    """Whether ``msg`` (read at a row's DEAD_LETTERS sequence) is the letter the row
    indexed: the same DEAD_LETTERS generation, and the same original stream and sequence
    where the copy names them. Rows indexed before generations were kept ("") rely on
    the second check alone."""
    # A "#r..." suffix marks a restored stream's different message at a known key: the
    # same stream, so the same DEAD_LETTERS generation as far as reading goes.
    if generation and current and generation.split("#")[0] != current:
        return False
    headers = msg.get("headers") or {}
    if headers.get(dl.H_STREAM) and stream and headers[dl.H_STREAM] != stream:
        return False
    seq = headers.get(dl.H_SEQ, "")
    if stream_seq is not None and seq.isascii() and seq.isdigit() and len(seq) <= 19:
        return int(seq) == stream_seq
    return True
