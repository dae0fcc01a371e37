from django.urls import path

from . import views

app_name = "streams"
urlpatterns = [
    path("", views.stream_list, name="list"),
    path("<str:name>/", views.stream_detail, name="detail"),
    path("<str:name>/messages/", views.stream_messages, name="messages"),
    path("<str:name>/messages/<str:seq>/", views.stream_message, name="message"),
    path("<str:name>/messages/<str:seq>/raw/", views.stream_message_raw, name="message_raw"),
    path("<str:name>/purge/preview/", views.purge_preview, name="purge_preview"),
    path("<str:name>/purge/", views.purge, name="purge"),
    path("<str:name>/delete/preview/", views.delete_preview, name="delete_preview"),
    path("<str:name>/delete/", views.delete_message, name="delete"),
    path("<str:name>/replay/", views.stream_replay, name="replay"),
]
