"""What a team writes by hand to put GetUser on HTTP: one FastAPI route calling the generated stub
over grpc.aio, the reply as JSON. No auth, no limit. The bench's yardstick for the HTTP/JSON door.

    UPSTREAM=127.0.0.1:50151 uvicorn bench.http_endpoint:app --http httptools --loop uvloop
"""

from __future__ import annotations

import os
from typing import Any

import grpc
from fastapi import FastAPI, HTTPException
from shop.users.v1 import users_pb2, users_pb2_grpc

app = FastAPI()
_stub: users_pb2_grpc.UserServiceStub | None = None


def _users() -> users_pb2_grpc.UserServiceStub:
    # One channel for the process, made inside the running loop (grpc.aio wants that).
    global _stub
    if _stub is None:
        _stub = users_pb2_grpc.UserServiceStub(grpc.aio.insecure_channel(os.environ["UPSTREAM"]))
    return _stub


@app.get("/users/{user_id}")
async def get_user(user_id: int) -> dict[str, Any]:
    try:
        user = await _users().GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=5)
    except grpc.aio.AioRpcError as error:
        raise HTTPException(status_code=502, detail=error.details()) from None
    return {"user_id": user.user_id, "name": user.name, "segment": user.segment}
