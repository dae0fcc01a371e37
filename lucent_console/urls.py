from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from . import views

COMING = [
    # (path, url name, title, issue that fills it)
    ("streams/", "streams:list", "Streams", 3),
    ("deadletters/", "deadletters:list", "Dead letters", 4),
    ("agents/", "agents:list", "Agents", 5),
    ("services/", "services:list", "Services", 5),
    ("alerts/", "alerts:list", "Alerts", 6),
    ("audit/", "audit:list", "Audit", 4),
]

urlpatterns = [
    path("", views.overview, name="overview"),
    path("healthz", views.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
] + [
    path(p, views.coming, {"page": name.split(":")[0], "title": title, "issue": issue},
         name=name.replace(":", "-"))
    for p, name, title, issue in COMING
]
