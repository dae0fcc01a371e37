from django.urls import path

from . import views

app_name = "deadletters"
urlpatterns = [
    path("", views.dl_list, name="list"),
    path("bulk/", views.dl_bulk, name="bulk"),
    path("jobs/<int:pk>/", views.job_detail, name="job"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job_cancel"),
    path("<int:pk>/", views.dl_detail, name="detail"),
    path("<int:pk>/replay/", views.dl_replay, name="replay"),
    path("<int:pk>/purge/", views.dl_purge, name="purge"),
]
