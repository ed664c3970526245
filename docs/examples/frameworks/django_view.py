"""Django: submit jobs from an ordinary (synchronous) view with `submit_sync`.

One connection per process, shared by every request thread, opened on the first submit.
A single-file Django project, so it runs as it stands:

    pip install django
    chronos dev                                   # another terminal
    chronos serve worker --tasks django_view      # a worker for this file's task
    python django_view.py runserver               # then: curl -X POST 'localhost:8000/signup?email=a@example.com'
"""

import sys

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

import chronos

if not settings.configured:
    settings.configure(DEBUG=True, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="example-only",
                       MIDDLEWARE=[])
    django.setup()


@chronos.task(name="emails.welcome_django", queue="mail", max_attempts=3)
def send_welcome(email: str) -> dict:
    return {"welcomed": email}


def signup(request: HttpRequest) -> JsonResponse:
    email = request.GET.get("email", "")
    try:
        job = send_welcome.submit_sync(email)
    except chronos.ChronosError as exc:  # a bad call is a one-line error, nothing was enqueued
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"job": job.id}, status=202)


urlpatterns = [path("signup", signup)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
