import asyncio
import sys

from django.conf import settings
from django.core.management.base import BaseCommand

from lucent_bus.runner import run_until_signalled
from lucent_console import leader
from lucent_console.supervisor import die_with_parent


class Command(BaseCommand):
    help = ("Run Celery beat (the periodic tasks) in exactly one process of the deployment. "
            "Run one per machine if you like: they elect a leader on the bus (lease 'beat'), "
            "the leader runs `celery beat`, the others stand by and take over about "
            "LUCENT_LEADER_TTL seconds after it dies.")

    def add_arguments(self, parser):
        parser.add_argument("--schedule", default=settings.CELERY_BEAT_SCHEDULE_FILENAME,
                            help="celery beat's schedule file (default: %(default)s)")

    def handle(self, *args, schedule, **options):
        run_until_signalled("beat", lambda nc, stop: leader.run_while_leader(
            nc, stop, "beat", lambda stop_work: celery_beat(stop_work, schedule)))


async def celery_beat(stop: asyncio.Event, schedule: str) -> None:
    """``celery beat`` as a child process until ``stop``; it dies with this process
    (PR_SET_PDEATHSIG), so a leader killed with -9 leaves no beat behind."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "celery", "-A", "lucent_console", "--quiet", "beat",
        "--loglevel", "WARNING", "--schedule", schedule,
        cwd=settings.BASE_DIR, preexec_fn=die_with_parent)
    try:
        exited = asyncio.create_task(proc.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if exited.done():
            raise RuntimeError(f"celery beat exited with status {proc.returncode}")
        proc.terminate()
        try:
            await asyncio.wait_for(exited, 0.3)  # the leader waits for us 1/10 of the TTL
        except TimeoutError:
            pass
    finally:
        if proc.returncode is None:
            proc.kill()  # also when cancelled: no beat may outlive the term
