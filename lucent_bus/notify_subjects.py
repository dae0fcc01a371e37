"""The console's own subjects: one name each, used everywhere (never typed again).

Everything under ``lucent.console.>`` is the console talking to itself; it is one of
the reserved subjects (``subjects.RESERVED``) that nothing sent on an operator's behalf
may reach. Bodies are the senders' business: see each publisher.
"""

PREFIX = "lucent.console"
ALL = f"{PREFIX}.>"

# The collector's snapshot deltas, one per sweep (lucent_bus.live), and the whole
# snapshot on request.
LIVE_DELTA = f"{PREFIX}.live.delta"
LIVE_FULL = f"{PREFIX}.live.full"
# "Something changed, read it again" for the pages' relays (empty or tiny bodies):
LIVE_DEADLETTERS = f"{PREFIX}.live.deadletters"  # new dead letters indexed
LIVE_SERVICES = f"{PREFIX}.live.services"  # a service's state or its feed changed
LIVE_ALERTS = f"{PREFIX}.live.alerts"  # an alert fired, resolved or was acknowledged
# The streams the pages open in browsers show, announced by the web processes (a JSON
# list of names, renewed every few seconds); the collector sweeps them fast.
LIVE_WATCH = f"{PREFIX}.live.watch"
