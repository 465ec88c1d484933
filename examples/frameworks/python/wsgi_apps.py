"""The tiny app as Flask and as Django, for gunicorn's threaded workers (`-k gthread`):
`gunicorn -k gthread wsgi_apps:flask_app` or `wsgi_apps:django_app`. gunicorn reads
LISTEN_FDS itself; on SIGTERM a gthread worker stops accepting and answers what is in flight
with `Connection: close` before it closes: no drain code is needed."""

import os

import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path
from flask import Flask

flask_app = Flask(__name__)


@flask_app.get("/")
def flask_hello():
    return f"hello from {os.getpid()}\n", 200, {"Content-Type": "text/plain"}


def django_hello(request):
    return HttpResponse(f"hello from {os.getpid()}\n", content_type="text/plain")


urlpatterns = [path("", django_hello)]
settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="corral-example",
                   MIDDLEWARE=[], INSTALLED_APPS=[])
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402

django_app = get_wsgi_application()
