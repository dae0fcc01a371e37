from django.urls import path

from . import views

app_name = "kv"
urlpatterns = [
    path("", views.bucket_list, name="list"),
    path("<str:bucket>/", views.bucket_detail, name="bucket"),
    path("<str:bucket>/changes/", views.bucket_changes, name="changes"),
    path("<str:bucket>/put/", views.put, name="put"),
    path("<str:bucket>/delete/", views.delete, name="delete"),
    path("<str:bucket>/keys/<path:key>/", views.key_detail, name="key"),
]
