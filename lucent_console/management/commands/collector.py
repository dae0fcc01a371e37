from django.core.management.base import BaseCommand

from lucent_console import collector
from lucent_console.bus.runner import run_until_signalled


class Command(BaseCommand):
    help = "Run the collector (the one process that watches the bus) until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=None,
                            help="seconds between sweeps (LUCENT_SWEEP_INTERVAL, 1)")

    def handle(self, *args, interval, **options):
        run_until_signalled("collector", lambda nc, stop: collector.run(nc, stop, interval))
