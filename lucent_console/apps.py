from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The project shell and the live layer (collector, relay, websocket, /metrics, `up`):
    an app for its management commands and template tags; it has no models."""

    name = "lucent_console"
    label = "console"
