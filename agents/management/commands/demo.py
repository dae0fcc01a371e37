import asyncio

from django.core.management.base import BaseCommand

from agents import demo
from lucent_bus.runner import run_until_signalled


class Command(BaseCommand):
    help = "Run the simulated Lucent services against NATS_URL until interrupted."

    def add_arguments(self, parser):
        d = demo.DemoConfig.from_env()
        parser.add_argument("--rate", type=float, default=d.commands_per_s,
                            help="trade commands per second (each queues agent jobs)")
        parser.add_argument("--poison", type=float, default=d.poison_share,
                            help="share of agent jobs that always fail (become dead letters)")
        parser.add_argument("--transient", type=float, default=d.transient_share,
                            help="share of agent jobs that fail once")
        parser.add_argument("--heartbeat", type=float, default=d.heartbeat_s,
                            help="seconds between service heartbeats")

    def handle(self, *args, rate, poison, transient, heartbeat, **options):
        if rate <= 0 or heartbeat <= 0 or not (0 <= poison <= 1) or not (0 <= transient <= 1):
            self.stderr.write("rate and heartbeat must be > 0; shares between 0 and 1")
            raise SystemExit(2)
        config = demo.DemoConfig(commands_per_s=rate, poison_share=poison,
                                 transient_share=transient, heartbeat_s=heartbeat)

        async def work(nc, stop: asyncio.Event):
            self.stdout.write(f"demo: {rate}/s trade commands, {poison:.0%} poison jobs")
            await demo.run(nc, config, stop)

        run_until_signalled("demo", work)
