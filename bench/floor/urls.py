from django.urls import path

from bench.floor import views
from marketplace.urls import urlpatterns as marketplace_urlpatterns

urlpatterns = [
    path("bench/thin/", views.ThinOrderApi.as_view()),
    path("bench/floor/", views.FloorOrderApi.as_view()),
    path("bench/baseline/", views.BaselineOrderApi.as_view()),
    *marketplace_urlpatterns,
]
