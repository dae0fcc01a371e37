from django.apps import AppConfig


class KvConfig(AppConfig):
    name = "kv"
