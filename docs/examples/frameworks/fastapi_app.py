"""FastAPI: submit jobs from request handlers through one Client opened in the app's lifespan.

    pip install fastapi uvicorn
    chronos dev                                   # another terminal: server, scheduler, demo worker
    chronos serve worker --tasks fastapi_app      # a worker for this file's task (queue "mail")
    uvicorn fastapi_app:app                       # then: curl -X POST 'localhost:8000/signup?email=a@example.com'
"""

from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI

import chronos
from chronos import Client, load_settings


@chronos.task(name="emails.welcome", queue="mail", max_attempts=3)
async def send_welcome(email: str) -> dict:
    return {"welcomed": email}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One connection for the app's life; task handles submit through it.
    client = await Client.connect(load_settings())
    chronos.set_client(client)
    try:
        yield
    finally:
        chronos.set_client(None)
        await client.close()


app = FastAPI(lifespan=lifespan)


@app.post("/signup")
async def signup(email: str) -> dict:
    job = await send_welcome.submit(email)  # returns once the server has the job
    return {"job": job.id}


@app.get("/jobs/{job_id}")
async def job_state(job_id: str) -> dict:
    client = await chronos.tasks.get_client()
    rec = await client.get(job_id)
    return {"id": rec.id, "state": rec.state.value, "result": rec.result}
