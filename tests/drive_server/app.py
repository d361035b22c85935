"""The ASGI app of the Drive test server (Starlette).

Implements, as Google documents them, what the project's Drive client sends:

- ``POST /token``: OAuth2 token endpoint; the JWT-bearer grant of service accounts (signature checked against
  the registered public key, ``aud`` = Google's token endpoint, which google-auth always signs for,
  ``scope`` must hold the required scope, ``exp`` in the future; ``sub`` is recorded for delegation) and the
  ``refresh_token`` grant of ``authorized_user`` files.
- ``GET /drive/v3/files/{id}`` (files.get), ``GET /drive/v3/files`` (files.list with the ``q`` terms
  ``name = '..'``, ``'..' in parents``, ``mimeType = '..'``, ``trashed = false``; ``pageSize``/``pageToken``),
  ``POST /drive/v3/files`` (files.create without media: folders).
- ``POST /upload/drive/v3/files?uploadType=multipart`` and the resumable protocol:
  ``POST ...?uploadType=resumable`` opens a session (``Location`` header), ``PUT <session>`` with
  ``Content-Range: bytes a-b/total`` appends a chunk (``308`` + ``Range`` until complete, then ``200`` + the
  file), ``PUT`` with ``Content-Range: bytes */total`` reports the session's state.

Every API call needs a bearer token this server issued. Responses honour the ``fields`` parameter, so a
client that forgets to ask for ``md5Checksum`` does not get it (as with Drive).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from google.auth import exceptions as auth_exceptions
from google.auth import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.drive_server.state import DriveState, Fault, StoredFile, UploadSession

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth signs every service-account assertion for Google's token endpoint, whatever the key's token_uri
# (google/oauth2/service_account.py: "aud": _GOOGLE_OAUTH2_TOKEN_ENDPOINT), and Google's server requires it.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


# -- responses -----------------------------------------------------------------------------------
def drive_error(status: int, reason: str, message: str) -> JSONResponse:
    body = {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"domain": "global", "reason": reason, "message": message}],
        }
    }
    return JSONResponse(body, status_code=status)


def oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


class DroppedResponse(Response):
    """Sends the headers and a few bytes of a promised body, then the connection is closed (uvicorn closes
    the transport when an app returns without completing its response)."""

    def __init__(self, status_code: int = 200) -> None:
        super().__init__(status_code=status_code)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"kind": "drive#fi', "more_body": True})


# -- fields= and q= ------------------------------------------------------------------------------
def parse_fields(spec: str) -> dict[str, Any]:
    """``"id,files(id,name),nextPageToken"`` -> ``{"id": None, "files": {"id": None, "name": None}, ...}``."""
    result: dict[str, Any] = {}
    depth, start = 0, 0
    parts: list[str] = []
    for i, ch in enumerate(spec):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        if "(" in part:
            name, inner = part.split("(", 1)
            result[name.strip()] = parse_fields(inner.rstrip(")"))
        elif "/" in part:
            head, tail = part.split("/", 1)
            result.setdefault(head, {}).update(parse_fields(tail))
        else:
            result[part] = None
    return result


def apply_fields(resource: dict[str, Any], spec: dict[str, Any] | None) -> dict[str, Any]:
    if spec is None or "*" in spec:
        return resource
    out: dict[str, Any] = {}
    for key, sub in spec.items():
        if key not in resource:
            continue
        value = resource[key]
        if isinstance(sub, dict) and isinstance(value, dict):
            out[key] = apply_fields(value, sub)
        elif isinstance(sub, dict) and isinstance(value, list):
            out[key] = [apply_fields(v, sub) if isinstance(v, dict) else v for v in value]
        else:
            out[key] = value
    return out


DEFAULT_FILE_FIELDS = {"kind": None, "id": None, "name": None, "mimeType": None}
_Q_TERMS = [
    (re.compile(r"^name\s*=\s*'((?:[^'\\]|\\.)*)'$"), "name"),
    (re.compile(r"^'((?:[^'\\]|\\.)*)'\s+in\s+parents$"), "parent"),
    (re.compile(r"^mimeType\s*=\s*'((?:[^'\\]|\\.)*)'$"), "mime"),
    (re.compile(r"^mimeType\s*!=\s*'((?:[^'\\]|\\.)*)'$"), "not_mime"),
    (re.compile(r"^trashed\s*=\s*(true|false)$"), "trashed"),
]


def _split_and(q: str) -> list[str]:
    terms, buf, quoted, escaped = [], [], False, False
    i = 0
    while i < len(q):
        ch = q[i]
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "'":
            quoted = not quoted
        elif not quoted and q[i : i + 5].lower() == " and ":
            terms.append("".join(buf).strip())
            buf = []
            i += 5
            continue
        buf.append(ch)
        i += 1
    terms.append("".join(buf).strip())
    return [t for t in terms if t]


def parse_q(q: str) -> list[tuple[str, str]]:
    """The filters of a ``q`` the server understands; anything else is a 400, as Drive answers bad queries."""
    filters = []
    for term in _split_and(q):
        for pattern, kind in _Q_TERMS:
            m = pattern.match(term)
            if m:
                value = re.sub(r"\\(.)", r"\1", m.group(1))
                filters.append((kind, value))
                break
        else:
            raise ValueError(term)
    return filters


def matches(f: StoredFile, filters: list[tuple[str, str]]) -> bool:
    for kind, value in filters:
        if (
            (kind == "name" and f.name != value)
            or (kind == "parent" and value not in f.parents)
            or (kind == "mime" and f.mime_type != value)
            or (kind == "not_mime" and f.mime_type == value)
            or (kind == "trashed" and f.trashed != (value == "true"))
        ):
            return False
    return True


# -- the app -------------------------------------------------------------------------------------
def create_drive_app(state: DriveState) -> Starlette:
    def record(op: str, request: Request, **extra: Any) -> None:
        with state.lock:
            state.calls.append(
                {
                    "op": op,
                    "method": request.method,
                    "path": request.url.path,
                    "query": dict(request.query_params),
                }
                | extra
            )

    async def fault_response(fault: Fault | None) -> Response | None:
        if fault is not None and fault.kind == "status":
            return drive_error(fault.status, fault.reason, f"Injected fault: {fault.reason}")
        return None

    async def finish(fault: Fault | None, response: Response) -> Response:
        """Deliver a response that was computed (the work is done), unless a drop or slow fault says not."""
        if fault is not None and fault.kind == "drop":
            return DroppedResponse(response.status_code)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        return response

    def authorized(request: Request) -> dict[str, Any] | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return None
        with state.lock:
            return state.tokens.get(header.removeprefix("Bearer "))

    def unauthorized() -> JSONResponse:
        response = drive_error(401, "authError", "Request had invalid authentication credentials.")
        response.headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/"'
        return response

    def visible(file_id: str) -> StoredFile | None:
        with state.lock:
            f = state.files.get(file_id)
            return None if f is None or file_id in state.hidden else f

    def fields_of(request: Request) -> dict[str, Any] | None:
        spec = request.query_params.get("fields")
        return parse_fields(spec) if spec else None

    def file_body(f: StoredFile, fields: dict[str, Any] | None) -> dict[str, Any]:
        return apply_fields(f.resource(), fields if fields is not None else DEFAULT_FILE_FIELDS)

    def check_parents(parents: list[str]) -> Response | None:
        for parent_id in parents:
            parent = visible(parent_id)
            if parent is None or not parent.is_folder:
                return drive_error(404, "notFound", f"File not found: {parent_id}.")
            if not parent.writable:
                return drive_error(
                    403,
                    "insufficientFilePermissions",
                    "The user does not have sufficient permissions for this file.",
                )
        return None

    # -- OAuth2 ----------------------------------------------------------------------------------
    async def token(request: Request) -> Response:
        # application/x-www-form-urlencoded, parsed here (Starlette's form() needs python-multipart)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        grant = str(form.get("grant_type", ""))
        record("token", request, grant_type=grant)
        fault = state.take_fault("token")
        if fault is not None and fault.kind == "status":
            return oauth_error("internal_failure", "Injected fault", fault.status)
        if grant == JWT_GRANT:
            assertion = str(form.get("assertion", ""))
            try:
                unverified = jwt.decode(assertion, verify=False)
            except (ValueError, auth_exceptions.GoogleAuthError):
                return oauth_error("invalid_grant", "Invalid JWT.")
            issuer = str(unverified.get("iss", ""))
            with state.lock:
                public_key = state.service_accounts.get(issuer)
            if public_key is None:
                return oauth_error("invalid_grant", "Invalid grant: account not found", 400)
            try:
                claims = jwt.decode(assertion, certs=public_key, audience=GOOGLE_TOKEN_AUDIENCE)
            except (ValueError, auth_exceptions.GoogleAuthError) as exc:
                return oauth_error("invalid_grant", f"Invalid JWT Signature. ({exc})")
            if claims.get("exp", 0) < time.time():
                return oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token")
            scopes = set(str(claims.get("scope", "")).split())
            if state.required_scope not in scopes:
                return oauth_error("invalid_scope", f"Scope {state.required_scope} was not requested.")
            subject = claims.get("sub")
            principal = {"iss": issuer, "sub": subject, "scope": " ".join(sorted(scopes))}
        elif grant == "refresh_token":
            client_id = str(form.get("client_id", ""))
            with state.lock:
                registered = state.oauth_clients.get(client_id)
            if registered is None or registered != (form.get("client_secret"), form.get("refresh_token")):
                return oauth_error("invalid_grant", "Token has been expired or revoked.")
            principal = {"iss": client_id, "sub": None, "scope": state.required_scope}
        else:
            return oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant}")
        access_token = "ya29.test-" + secrets.token_urlsafe(32)
        with state.lock:
            state.tokens[access_token] = principal
        body = {"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"}
        return await finish(fault, JSONResponse(body))

    # -- files.get / files.list / files.create ---------------------------------------------------
    async def files_get(request: Request) -> Response:
        record("files.get", request)
        if authorized(request) is None:
            return unauthorized()
        fault = state.take_fault("files.get")
        if (early := await fault_response(fault)) is not None:
            return early
        file_id = request.path_params["file_id"]
        f = visible(file_id)
        if f is None:
            return drive_error(404, "notFound", f"File not found: {file_id}.")
        return await finish(fault, JSONResponse(file_body(f, fields_of(request))))

    async def files_list(request: Request) -> Response:
        record("files.list", request)
        if authorized(request) is None:
            return unauthorized()
        fault = state.take_fault("files.list")
        if (early := await fault_response(fault)) is not None:
            return early
        try:
            filters = parse_q(request.query_params.get("q", ""))
        except ValueError as exc:
            return drive_error(400, "invalid", f"Invalid Value: unsupported query term {exc}")
        with state.lock:
            found = sorted(
                (f for f in state.files.values() if f.id not in state.hidden and matches(f, filters)),
                key=lambda f: f.created_time,
            )
        page_size = int(request.query_params.get("pageSize", "100"))
        offset = int(request.query_params.get("pageToken", "0") or 0)
        page = found[offset : offset + page_size]
        body: dict[str, Any] = {"kind": "drive#fileList", "incompleteSearch": False, "files": []}
        fields = fields_of(request)
        file_fields = fields.get("files") if fields is not None else DEFAULT_FILE_FIELDS
        body["files"] = [apply_fields(f.resource(), file_fields) for f in page]
        if offset + page_size < len(found):
            body["nextPageToken"] = str(offset + page_size)
        if fields is not None:
            body = {k: v for k, v in body.items() if k in fields}
        return await finish(fault, JSONResponse(body))

    async def files_create(request: Request) -> Response:
        record("files.create", request)
        if authorized(request) is None:
            return unauthorized()
        fault = state.take_fault("files.create")
        if (early := await fault_response(fault)) is not None:
            return early
        try:
            metadata = json.loads(await request.body() or b"{}")
        except ValueError:
            return drive_error(400, "parseError", "Parse Error")
        parents = list(metadata.get("parents") or [])
        if (denied := check_parents(parents)) is not None:
            return denied
        with state.lock:
            f = StoredFile(
                id=state.new_id(),
                name=str(metadata.get("name", "Untitled")),
                mime_type=str(metadata.get("mimeType", "application/octet-stream")),
                parents=parents,
                created_time=state.now(),
            )
            state.files[f.id] = f
        return await finish(fault, JSONResponse(file_body(f, fields_of(request))))

    # -- uploads ---------------------------------------------------------------------------------
    def store_upload(metadata: dict[str, Any], mime_type: str, content: bytes) -> StoredFile:
        with state.lock:
            f = StoredFile(
                id=state.new_id(),
                name=str(metadata.get("name", "Untitled")),
                mime_type=str(metadata.get("mimeType") or mime_type or "application/octet-stream"),
                parents=list(metadata.get("parents") or []),
                content=content,
                created_time=state.now(),
            )
            state.files[f.id] = f
            return f

    def quota_error() -> JSONResponse:
        return drive_error(
            403,
            "storageQuotaExceeded",
            "Service Accounts do not have storage quota. Leverage shared drives "
            "(https://developers.google.com/workspace/drive/api/guides/about-shareddrives), or use OAuth "
            "delegation (http://support.google.com/a/answer/7281227) instead.",
        )

    async def upload_start(request: Request) -> Response:
        upload_type = request.query_params.get("uploadType", "")
        op = "upload.multipart" if upload_type == "multipart" else "upload.init"
        record(op, request)
        if authorized(request) is None:
            return unauthorized()
        fault = state.take_fault(op)
        if (early := await fault_response(fault)) is not None:
            return early
        body = await request.body()
        if upload_type == "multipart":
            try:
                metadata, mime_type, content = parse_multipart(request.headers.get("content-type", ""), body)
            except ValueError as exc:
                return drive_error(400, "badContent", f"Malformed multipart body: {exc}")
        elif upload_type == "resumable":
            metadata, mime_type, content = json.loads(body or b"{}"), "", b""
            mime_type = request.headers.get("x-upload-content-type", "")
        else:
            return drive_error(400, "invalid", f"Unsupported uploadType {upload_type!r}")
        if (denied := check_parents(list(metadata.get("parents") or []))) is not None:
            return denied
        if state.quota_exceeded:
            return quota_error()
        if upload_type == "multipart":
            f = store_upload(metadata, mime_type, content)
            return await finish(fault, JSONResponse(file_body(f, fields_of(request))))
        total = request.headers.get("x-upload-content-length")
        session = UploadSession(
            id=secrets.token_urlsafe(16),
            metadata=metadata,
            mime_type=mime_type,
            total=int(total) if total is not None else None,
            fields=request.query_params.get("fields"),
        )
        with state.lock:
            state.sessions[session.id] = session
        location = f"{state.base_url}/upload/drive/v3/files?uploadType=resumable&upload_id={session.id}"
        return await finish(fault, Response(status_code=200, headers={"Location": location}))

    def session_state(session: UploadSession) -> Response:
        if session.file_id is not None:
            with state.lock:
                f = state.files[session.file_id]
            fields = parse_fields(session.fields) if session.fields else None
            return JSONResponse(file_body(f, fields))
        headers = {"Range": f"bytes=0-{len(session.received) - 1}"} if session.received else {}
        return Response(status_code=308, headers=headers)

    async def upload_put(request: Request) -> Response:
        content_range = request.headers.get("content-range", "")
        m = re.fullmatch(r"bytes (\*|(\d+)-(\d+))/(\*|\d+)", content_range)
        op = "upload.status" if m is not None and m.group(1) == "*" else "upload.chunk"
        record(op, request, content_range=content_range)
        if authorized(request) is None:
            return unauthorized()
        with state.lock:
            session = state.sessions.get(request.query_params.get("upload_id", ""))
        if session is None:
            return drive_error(404, "notFound", "Upload session not found or expired.")
        fault = state.take_fault(op)
        if (early := await fault_response(fault)) is not None:
            return early
        body = await request.body()
        if m is None:
            return drive_error(400, "badRequest", "Missing or malformed Content-Range")
        if m.group(4) != "*":
            session.total = int(m.group(4))
        if m.group(1) == "*":  # status query
            return await finish(fault, session_state(session))
        if session.file_id is not None:
            return session_state(session)
        start, end = int(m.group(2)), int(m.group(3))
        if end - start + 1 != len(body):
            return drive_error(400, "badRequest", "Content-Range does not match the body length")
        if start > len(session.received):
            return drive_error(
                400, "badRequest", f"Chunk starts at {start}; expected {len(session.received)}"
            )
        data = body[len(session.received) - start :]  # a re-sent overlap is ignored, as Drive does
        if fault is not None and fault.kind == "drop":
            data = data[: len(data) // 2]  # the connection dies mid-chunk: only part of it arrived
        session.received.extend(data)
        if session.total is not None and len(session.received) >= session.total:
            f = store_upload(session.metadata, session.mime_type, bytes(session.received[: session.total]))
            session.file_id = f.id
        return await finish(fault, session_state(session))

    return Starlette(
        routes=[
            Route("/token", token, methods=["POST"]),
            Route("/drive/v3/files", files_list, methods=["GET"]),
            Route("/drive/v3/files", files_create, methods=["POST"]),
            Route("/drive/v3/files/{file_id}", files_get, methods=["GET"]),
            Route("/upload/drive/v3/files", upload_start, methods=["POST"]),
            Route("/upload/drive/v3/files", upload_put, methods=["PUT"]),
        ]
    )


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], str, bytes]:
    """Split a ``multipart/related`` upload into (metadata, media MIME type, media bytes)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/related") or m is None:
        raise ValueError("expected multipart/related with a boundary")
    delimiter = b"--" + m.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n").removeprefix(b"\n")
        ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := chunk.find(sep)) >= 0]
        if not ends:
            raise ValueError("a part has no header block")
        cut, width = min(ends)
        head, content = chunk[:cut], chunk[cut + width :]
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        headers = {}
        for line in head.decode("latin-1").splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        parts.append((headers, content))
    if len(parts) != 2:
        raise ValueError(f"expected 2 parts, got {len(parts)}")
    metadata = json.loads(parts[0][1] or b"{}")
    return metadata, parts[1][0].get("content-type", "application/octet-stream"), parts[1][1]
