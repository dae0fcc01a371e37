from django.urls import path

from . import api

urlpatterns = [
    path("servers/", api.server_list, name="api-servers"),
    path("connections/", api.connection_list, name="api-connections"),
]
