from django.urls import path

from . import consumer_views, editor_views, views

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
    path("<str:name>/consumer-create/", consumer_views.consumer_config, name="consumer_create"),
    path("<str:name>/consumers/<str:consumer>/", consumer_views.consumer_detail, name="consumer"),
    path("<str:name>/consumers/<str:consumer>/edit/", consumer_views.consumer_config,
         name="consumer_edit"),
    path("<str:name>/consumers/<str:consumer>/<str:action>/", consumer_views.consumer_action,
         name="consumer_action"),
    # The stream editor (streams/editor_views.py). "new/..." has two segments, so it
    # never hides the page of a stream named "new".
    path("new/form/", editor_views.new_form, name="new_form"),
    path("new/preview/", editor_views.create_preview, name="create_preview"),
    path("new/create/", editor_views.create, name="create"),
    path("<str:name>/config/", editor_views.config_fragment, name="config"),
    path("<str:name>/edit/", editor_views.edit_page, name="edit"),
    path("<str:name>/edit/preview/", editor_views.edit_preview, name="edit_preview"),
    path("<str:name>/edit/apply/", editor_views.edit_apply, name="edit_apply"),
    path("<str:name>/delete-stream/", editor_views.delete_stream, name="delete_stream"),
]
