import os

from celery import Celery

from . import broker  # noqa: F401  registers the embedded broker's transport ("lucentfs://")

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lucent_console.settings")

app = Celery("lucent_console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
