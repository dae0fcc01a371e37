from django.core.management.base import BaseCommand

from lucent_bus.client import connect
from lucent_bus.runner import run_until_signalled
from lucent_console import collector, leader


class Command(BaseCommand):
    help = ("Run the collector (sweeps, dead-letter capture and index) until interrupted. "
            "Run one per machine if you like: they elect a leader on the bus, the others "
            "stand by and take over about LUCENT_LEADER_TTL seconds after it dies.")

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=None,
                            help="seconds between sweeps (LUCENT_SWEEP_INTERVAL, 1)")

    def handle(self, *args, interval, **options):
        async def collect(stop):
            # A connection of its own per term: closing it ends every subscription
            # of the term, so a deposed leader answers nothing any more.
            nc = await connect("collector (leader)")
            try:
                await collector.run(nc, stop, interval)
            finally:
                await nc.close()

        run_until_signalled("collector", lambda nc, stop: leader.run_while_leader(
            nc, stop, "collector", collect))
