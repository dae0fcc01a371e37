"""``manage.py deadletters list|replay|purge|reindex``: the same service layer as the web."""

import json
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from deadletters import index as dl_index
from deadletters import plans, replay, search
from deadletters.api import letter_row
from deadletters.serializers import (
    BulkPurgeSerializer,
    BulkReplaySerializer,
    DeadLetterReplaySerializer,
)
from kernel.actions import ActionError
from kernel.models import Job
from kernel.serializers import check
from lucent_bus import sync as bus_sync

NO_WORKER_S = 10  # a job still queued after this long: say that no worker seems to be there


class Command(BaseCommand):
    help = "List, replay, purge or reindex dead letters (filters as in the web and API)."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "replay", "purge", "reindex"])
        for name in search.FILTERS:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name)
        parser.add_argument("--id", type=int, help="one dead letter (replay/purge)")
        parser.add_argument("--to", dest="target", help="replay to this subject")
        parser.add_argument("--rate", type=float, help="messages per second")
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument("--all", action="store_true",
                            help="replay or purge every dead letter (needed when no filter is given)")
        parser.add_argument("--remove-original", action="store_true")
        parser.add_argument("--user", default="admin", help="who acts (audited); default admin")
        parser.add_argument("--limit", type=int, default=50)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, action, **opts):
        filters = {k: opts[k] for k in search.FILTERS if opts.get(k)}
        try:
            if action == "reindex":
                added = bus_sync.with_own_client("reindex", dl_index.reindex)
                self.stdout.write(f"indexed {added} dead letters from DEAD_LETTERS")
            elif action == "list":
                self.list(filters, opts)
            else:
                self.act(action, filters, opts)
        except ActionError as exc:
            raise CommandError(str(exc)) from exc

    def user(self, name):
        user = get_user_model().objects.filter(username=name).first()
        if user is None:
            raise CommandError(f"no user {name!r} (use --user)")
        return user

    def list(self, filters, opts):
        qs = search.filtered(search.clean_filters(filters))
        rows = [letter_row(x) for x in qs[: opts["limit"]]]
        if opts["json"]:
            self.stdout.write(json.dumps({"count": qs.count(), "results": rows}, indent=2))
            return
        for g in search.groups(qs):
            self.stdout.write(f"{g['n']:>7} {g['message_type'] or '(no type)'} from {g['consumer']}: "
                              f"{g['reason']}")
        for r in rows:
            self.stdout.write(f"{r['id']:>7} {r['captured_at'][:19]} {r['stream']}#{r['stream_seq']} "
                              f"{r['subject']} {r['consumer']} {r['reason']} {r['status']}")
        self.stdout.write(f"{qs.count()} matched")

    def request(self, action: str, filters: dict, opts: dict) -> dict:
        """The API's request body for these options (only what was given): the CLI is
        validated by the API's serializer, so it refuses what the API refuses."""
        if opts["id"]:
            body = {"subject": opts["target"], "remove_original": opts["remove_original"] or None}
        else:
            body = {**{("subject_filter" if k == "subject" else k): v for k, v in filters.items()},
                    "all": opts["all"] or None, "dry_run": opts["dry_run"] or None}
            if action == "replay":
                body.update(subject=opts["target"], rate=opts["rate"],
                            remove_original=opts["remove_original"] or None)
            elif opts["target"] or opts["rate"] is not None or opts["remove_original"]:
                raise CommandError("purge takes no --to, --rate or --remove-original")
        return {k: v for k, v in body.items() if v is not None}

    def act(self, action, filters, opts):
        user = self.user(opts["user"])
        body = self.request(action, filters, opts)
        if opts["id"]:
            if opts["dry_run"]:
                self.stdout.write(f"would {action} dead letter {opts['id']}")
                return
            if action == "replay":
                data = check(DeadLetterReplaySerializer, body, user=user,
                             action="deadletter.replay", target=str(opts["id"]), role="operator")
                result = replay.replay(user, opts["id"], data.get("subject"),
                                    bool(data.get("remove_original")))
            else:
                result = plans.purge_one(user, opts["id"])
            self.stdout.write(json.dumps(result, default=str))
            return
        serializer = BulkReplaySerializer if action == "replay" else BulkPurgeSerializer
        if not filters and not opts["all"]:
            # Audited like the API's refusal, with the CLI's wording of the remedy.
            try:
                check(serializer, body, user=user, action=f"deadletter.{action}_bulk",
                      target="DEAD_LETTERS", role="operator")
            except ActionError:
                pass
            raise CommandError(f"{action} of every dead letter: give a filter, or --all to mean it")
        data = check(serializer, body, user=user, action=f"deadletter.{action}_bulk",
                     target="DEAD_LETTERS", role="operator")
        filters = serializer.filters(data)
        target = data.get("subject") if action == "replay" else None
        if data.get("dry_run"):
            preview = plans.dry_run(search.clean_filters(filters), target)
            self.stdout.write(json.dumps({"dry_run": True, **preview}, indent=2))
            return
        started = plans.start_job(user, action, filters, target, data.get("rate"),
                                bool(data.get("remove_original")), everything=bool(data.get("all")))
        self.wait(user, started["job"])

    def wait(self, user, job_id: int) -> None:
        """Follow the queued job with a progress bar until it ends; Ctrl-C cancels it.
        The job runs in a Celery worker, never here as well (one runner, ever)."""
        queued_at, warned = time.monotonic(), False
        job = Job.objects.get(pk=job_id)
        try:
            while job.state not in Job.FINAL:
                if (job.state == Job.PENDING and not warned
                        and time.monotonic() - queued_at > NO_WORKER_S):
                    warned = True
                    self.stderr.write(f"\nno worker has taken job {job.pk} after {NO_WORKER_S:g} s: "
                                      "is a Celery "
                                      "worker running (manage.py up, or the Procfile's worker)? "
                                      "It stays queued; Ctrl-C cancels it.")
                self.progress(job)
                time.sleep(0.5)
                job.refresh_from_db()
        except KeyboardInterrupt:
            job = plans.cancel_job(user, job.pk)
            self.stderr.write(f"\ncancelling job {job.pk}...")
            while job.state not in Job.FINAL:
                time.sleep(0.25)
                job.refresh_from_db()
        self.progress(job)
        self.stdout.write("")
        self.stdout.write(f"job {job.pk} {job.state}: {job.total} matched, {job.done} done, "
                          f"{job.failed} failed" + (f", {job.unknown} outcome unknown (see the "
                                                    "dead-letter page)" if job.unknown else ""))
        if job.error:
            raise CommandError(job.error)

    def progress(self, job) -> None:
        if not self.stdout.isatty():
            return
        width = 30
        filled = width * job.percent // 100
        self.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {job.percent:3d}% "
                          f"{job.done + job.failed + job.unknown}/{job.total} {job.state:<10}",
                          ending="")
        self.stdout.flush()
