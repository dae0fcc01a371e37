from django.urls import path

from . import views

app_name = "publish"
urlpatterns = [
    path("", views.publish_page, name="form"),
    path("template/", views.envelope_template, name="template"),
]
