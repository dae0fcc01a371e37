from django.apps import AppConfig


class LucentConsoleConfig(AppConfig):
    name = "lucent_console"
    verbose_name = "Lucent Console"
