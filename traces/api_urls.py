"""Included under /api/v1/trace/ by lucent_console/urls.py."""

from django.urls import path

from . import views

urlpatterns = [path("<path:correlation_id>/", views.api_trace, name="api-trace")]
