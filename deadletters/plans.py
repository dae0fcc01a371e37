"""Bulk actions on dead letters as the pages, API and CLI start them: a dry run and the
plan that freezes its set, a bulk replay or purge job, cancel, and the one-letter purge.
Every action checks the role and writes the audit record (``kernel.actions``).
"""

from __future__ import annotations

from django.core import signing
from django.db.models import Count

from kernel.actions import ActionError, NotFound, Refused, audited
from kernel.jobs import enqueue
from kernel.models import AuditRecord, Job
from kernel.roles import has_role
from lucent_bus import deadletters as dl
from lucent_bus import jetstream as js
from lucent_bus import sync as bus_sync
from streams.replay import check_target

from .models import DeadLetter
from .search import clean_filters, current_generation, filtered, get, same_letter

PLAN_SALT = "lucent.deadletters.plan"

PLAN_MAX_AGE_S = 24 * 3600



def purge_one(user, dl_id) -> dict:
    with audited(user, "deadletter.purge", str(dl_id), {}, "operator") as outcome:
        letter = get(dl_id)
        purge_letters([letter])
        outcome.detail = f"purged dead letter {letter.dl_seq}"
    return {"status": "purged", "id": letter.id}



def purge_letters(letters: list[DeadLetter]) -> int:
    """Delete the letters' stored copies (those of the current DEAD_LETTERS generation: a
    row of an earlier one has no copy left to delete) and mark them purged."""
    async def go(nc):
        current = await current_generation(nc)
        for letter in letters:
            if letter.generation and letter.generation != current:
                continue
            if not letter.generation:  # indexed before generations: check it is the same
                msg = await js.next_message(nc, dl.STREAM, letter.dl_seq)
                if msg is None or msg["seq"] != letter.dl_seq or not same_letter(
                        "", letter.stream, letter.stream_seq, msg, current):
                    continue
            try:
                await js.delete_message(nc, dl.STREAM, letter.dl_seq)
            except js.JetStreamError as exc:
                if exc.err_code not in (js.NO_MESSAGE_FOUND, 10057):
                    raise
    bus_sync.with_client(go)
    DeadLetter.objects.filter(pk__in=[x.pk for x in letters]).update(status=DeadLetter.PURGED,
                                                                     payload_available=False)
    return len(letters)



def dry_run(filters: dict, subject: str | None = None) -> dict:
    """What a bulk job would do, and the ``plan`` that freezes it: a job started with the
    plan works on exactly these letters (the filters, up to the newest letter counted
    here), not on letters indexed since."""
    upto = DeadLetter.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    qs = filtered(filters).filter(pk__lte=upto)
    matched = qs.count()
    unavailable = qs.filter(payload_available=False).count()
    if subject:
        targets = [{"subject": subject, "n": matched - unavailable}]
    else:
        targets = list(qs.filter(payload_available=True).order_by().values("subject")
                       .annotate(n=Count("id")).order_by("-n")[:20])
    plan = signing.dumps({"filters": filters, "subject": subject, "upto": upto},
                         salt=PLAN_SALT, compress=True)
    return {"matched": matched, "unavailable": unavailable, "targets": targets, "plan": plan}



def _open_plan(plan: str, filters: dict, subject: str | None) -> int:
    """The frozen upper id of a dry run's plan, checked against what is being started."""
    try:
        frozen = signing.loads(plan, salt=PLAN_SALT, max_age=PLAN_MAX_AGE_S)
    except signing.BadSignature:
        raise ActionError("plan: not a plan from a dry run, or older than a day: "
                          "run the dry run again") from None
    if frozen["filters"] != filters or (frozen.get("subject") or None) != (subject or None):
        raise ActionError("plan: the filters or the target differ from the dry run's")
    return int(frozen["upto"])



def start_job(user, kind: str, params, subject: str | None = None, rate=None,
              remove_original: bool = False, plan: str | None = None,
              everything: bool | None = None) -> dict:
    """Create a bulk replay or purge job for every dead letter matching the filters (as
    counted by the dry run whose ``plan`` is given, or as they stand now).

    ``everything``: the API and the CLI say whether every dead letter is meant (their
    ``all``): then no filter may be given, and without it an empty filter is refused.
    None (the page, whose dry run and confirmation name the count) leaves it to the filters.
    """
    action = f"deadletter.{kind}_bulk"
    filters = {}
    with audited(user, action, "DEAD_LETTERS", {"filters": dict(params.items()) if params else {},
                                                 "subject": subject, "rate": rate,
                                                 **({"all": everything} if everything else {})},
                 "operator") as outcome:
        filters = clean_filters(params)
        if everything is False and not filters:
            raise ActionError(f"{kind} of every dead letter: give a filter, or \"all\": true")
        if everything and filters:
            raise ActionError("\"all\": true means every dead letter: give it without filters")
        if rate not in (None, ""):
            try:
                rate = float(rate)
            except (TypeError, ValueError, OverflowError):
                raise ActionError(f"rate must be a number of messages per second, "
                                  f"not {str(rate)[:40]!r}") from None
            # NaN fails every comparison, so it is refused here too; inf is not below 1e9.
            if not 0 < rate < 1e9:
                raise ActionError("rate must be above 0 and finite (leave it empty for as fast "
                                  "as the bus acks)")
        else:
            rate = None
        if subject is not None and not isinstance(subject, str):
            raise ActionError("subject must be text")
        subject = (subject or "").strip() or None
        if subject:
            async def check(nc):
                await check_target(nc, subject)
            bus_sync.with_client(check)
        upto = (_open_plan(plan, filters, subject) if plan else
                DeadLetter.objects.order_by("-pk").values_list("pk", flat=True).first() or 0)
        matched = filtered(filters).filter(pk__lte=upto).count()
        job = Job.objects.create(kind=kind, total=matched, created_by=user if user.pk else None,
                                 params={"filters": filters, "subject": subject, "rate": rate,
                                         "remove_original": remove_original, "upto_id": upto})
        outcome.detail = f"job {job.id}: {matched} matched"
    record = AuditRecord.objects.filter(action=action).order_by("-id").first()
    job.params["audit_id"] = record.id if record else None
    job.save(update_fields=["params"])
    enqueue(job.id)
    return {"job": job.id, "matched": matched}



def cancel_job(user, job_id) -> Job:
    """Cancel a job (operator, audited): within a second, whatever its rate."""
    with audited(user, "job.cancel", str(job_id), {}, "operator") as outcome:
        try:
            job = Job.objects.get(pk=int(job_id))
        except (ValueError, TypeError, Job.DoesNotExist):
            raise NotFound(f"no job {str(job_id)[:20]!r}") from None
        if job.state in Job.FINAL:
            raise ActionError(f"job {job.pk} has ended ({job.state})")
        job.request_cancel()
        outcome.detail = f"job {job.pk}: {job.state}"
    return job



def require_operator(user) -> None:
    if not has_role(user, "operator"):
        raise Refused("this needs the operator role")

