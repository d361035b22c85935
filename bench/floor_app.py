"""The floor: a bare ASGI app that reads a JSON body with the nine features and answers JSON.

No framework, no validation beyond "the nine keys are there", no metrics, no logging. It is what one
uvicorn worker can do at all on this machine; /predict is reported as a ratio to it.
Run: ``uvicorn bench.floor_app:app --host 127.0.0.1 --port N --no-access-log``.
"""

from __future__ import annotations

from typing import Any

import orjson

FIELDS = (
    "clump_thickness",
    "cell_size_uniformity",
    "cell_shape_uniformity",
    "marginal_adhesion",
    "epithelial_cell_size",
    "bare_nuclei",
    "bland_chromatin",
    "normal_nucleoli",
    "mitoses",
)
_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: accept startup/shutdown
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    try:
        data = orjson.loads(body)
        total = sum(int(data[name]) for name in FIELDS)
        status, out = 200, {"label": "benign", "class": 0, "sum": total}
    except (ValueError, KeyError, TypeError):
        status, out = 422, {"detail": "bad body"}
    payload = orjson.dumps(out)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_HEADERS, (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
