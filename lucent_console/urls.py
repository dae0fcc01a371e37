from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from agents import views as agent_views
from alerts import views as alert_views
from deadletters import api as dl_api
from kernel import api
from streams import api as stream_api
from streams import consumer_api

from . import metrics, views

api_v1 = [
    path("streams/", stream_api.stream_list, name="api-streams"),
    path("streams/<str:name>/", stream_api.stream_detail, name="api-stream"),
    path("streams/<str:name>/consumers/", consumer_api.consumers, name="api-consumers"),
    path("streams/<str:name>/consumers/<str:consumer>/", consumer_api.consumer, name="api-consumer"),
    path("streams/<str:name>/consumers/<str:consumer>/pause/", consumer_api.pause, name="api-consumer-pause"),
    path("streams/<str:name>/consumers/<str:consumer>/resume/", consumer_api.resume,
         name="api-consumer-resume"),
    path("streams/<str:name>/consumers/<str:consumer>/reset/", consumer_api.reset, name="api-consumer-reset"),
    path("streams/<str:name>/purge/", stream_api.purge, name="api-purge"),
    path("streams/<str:name>/messages/<str:seq>/", stream_api.delete_message, name="api-delete-message"),
    path("streams/<str:name>/replay/", stream_api.replay, name="api-stream-replay"),
    path("deadletters/", dl_api.dl_list, name="api-deadletters"),
    path("deadletters/replay/", dl_api.dl_replay_bulk, name="api-deadletters-replay"),
    path("deadletters/purge/", dl_api.dl_purge_bulk, name="api-deadletters-purge"),
    path("deadletters/<str:pk>/", dl_api.dl_detail, name="api-deadletter"),
    path("deadletters/<str:pk>/replay/", dl_api.dl_replay, name="api-deadletter-replay"),
    path("jobs/<str:pk>/", dl_api.job_detail, name="api-job"),
    path("jobs/<str:pk>/cancel/", dl_api.job_cancel, name="api-job-cancel"),
    path("agents/", agent_views.api_agents, name="api-agents"),
    path("services/", agent_views.api_services, name="api-services"),
    path("probe/", agent_views.api_probe, name="api-probe"),
    path("audit/", api.audit_list, name="api-audit"),
    path("alerts/", alert_views.api_alerts, name="api-alerts"),
    path("alerts/<str:pk>/<str:action>/", alert_views.api_alert_action, name="api-alert-action"),
    path("trace/", include("traces.api_urls")),
    path("kv/", include("kv.api_urls")),
    path("", include("servers.api_urls")),  # servers/ and connections/
    path("publish/", include("publish.api_urls")),
]

urlpatterns = [
    path("", views.overview, name="overview"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("streams/", include("streams.urls")),
    path("deadletters/", include("deadletters.urls")),
    path("audit/", views.audit, name="audit-list"),
    path("alerts/", alert_views.alert_list, name="alerts-list"),
    path("alerts/<str:pk>/<str:action>/", alert_views.alert_action, name="alert-action"),
    path("trace/", include("traces.urls")),
    path("kv/", include("kv.urls")),
    path("", include("servers.urls")),  # servers/ and connections/
    path("publish/", include("publish.urls")),
    path("services/", agent_views.service_list, name="services-list"),
    path("services/probe/", agent_views.probe_form, name="probe"),
    path("agents/", agent_views.agent_list, name="agents-list"),
    path("agents/hierarchy/", agent_views.hierarchy, name="hierarchy"),
    path("agents/<path:name>/", agent_views.agent_detail, name="agent-detail"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
]
