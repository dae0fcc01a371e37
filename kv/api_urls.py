from django.urls import path

from . import api

urlpatterns = [
    path("", api.bucket_list, name="api-kv"),
    path("<str:bucket>/keys/", api.key_list, name="api-kv-keys"),
    path("<str:bucket>/keys/<path:key>/", api.key_detail, name="api-kv-key"),
]
