from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The overview colours the dead-letter card by the figure the rate rule judges
        # (the last minute), which streams' totals do not carry by themselves.
        from streams import operations

        from . import thresholds

        operations.TOTALS.append(thresholds.overview_levels)
