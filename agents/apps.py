from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The overview's and the 24 h trends' figures of agents and services.
        from streams import operations

        from . import registry

        operations.TOTALS.append(registry.totals)
        operations.OVERVIEW_PARTS.append(registry.overview_part)
