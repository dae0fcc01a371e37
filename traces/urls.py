from django.urls import path

from . import views

app_name = "traces"
urlpatterns = [
    path("", views.search, name="search"),
    # path: a correlation id may hold a slash
    path("<path:correlation_id>/", views.detail, name="detail"),
]
