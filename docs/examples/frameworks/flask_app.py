"""Flask: submit jobs from a view with `submit_sync`, and read a job's state.

    pip install flask
    chronos dev                                   # another terminal
    chronos serve worker --tasks flask_app        # a worker for this file's task
    flask --app flask_app run                     # then: curl -X POST 'localhost:5000/signup?email=a@example.com'
"""

from flask import Flask, jsonify, request

import chronos

app = Flask(__name__)


@chronos.task(name="emails.welcome_flask", queue="mail", max_attempts=3)
def send_welcome(email: str) -> dict:
    return {"welcomed": email}


@app.post("/signup")
def signup():  # type: ignore[no-untyped-def]
    job = send_welcome.submit_sync(request.args.get("email", ""))
    return jsonify(job=job.id), 202


@app.get("/jobs/<job_id>")
def job_state(job_id: str):  # type: ignore[no-untyped-def]
    rec = chronos.sync_client().get(job_id)
    return jsonify(id=rec.id, state=rec.state.value, result=rec.result)


if __name__ == "__main__":
    app.run()
