from django.urls import path

from . import views

app_name = "servers"
urlpatterns = [
    path("servers/", views.servers, name="servers"),
    path("connections/", views.connections, name="connections"),
]
