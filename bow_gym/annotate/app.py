"""The web app: one plain HTML page and a small JSON API, on Flask (no front-end build step).

Routes (every ``/api`` route but ``health`` needs ``Authorization: Bearer <token>``):

=================  ======  ===========================================================
``/``              GET     the page (it asks for the token once and keeps it locally)
``/api/health``    GET     ``{"ok": true}``
``/api/me``        GET     the annotator, the project, progress
``/api/next``      POST    the current task: image, open proposal, masks (leases an image)
``/api/answer``    POST    ``{"proposal": id, "answer": "better" | "worse"}`` -> next task
``/api/skip``      POST    ``{"image": id}`` -> next task
``/api/undo``      POST    ``{}`` -> the task of the undone answer's image
``/api/image``     GET     ``?id=<image id>``: the image as PNG (only images in your queue)
=================  ======  ===========================================================

Refusals are JSON ``{"error": message}`` with a 4xx status; nothing is written for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bow_gym.annotate.project import ApiError, Project

STATIC = Path(__file__).resolve().parent / "static"
#: Largest request body accepted (answers are a few dozen bytes).
MAX_BODY = 16 * 1024


def create_app(project: Project) -> Any:
    """The Flask app of a :class:`~bow_gym.annotate.project.Project`."""
    from flask import Flask, Response, jsonify, request, send_file
    from werkzeug.exceptions import HTTPException

    app = Flask("bow_gym.annotate", static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["bow_gym_project"] = project

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> Any:
        resp = jsonify(error=e.message)
        resp.status_code = e.status
        if e.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="bow-gym annotate"'
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Any:
        resp = jsonify(error=f"{e.name}: {e.description}")
        resp.status_code = e.code or 500
        return resp

    @app.after_request
    def _headers(resp: Any) -> Any:
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
            "script-src 'self'; frame-ancestors 'none'")
        if request.path.startswith("/api/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    def annotator() -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if header and scheme.lower() != "bearer":
            raise ApiError(401, "the Authorization header must be 'Bearer <token>'")
        return project.authenticate(token.strip() or None)

    def body() -> Any:
        if not request.is_json:
            raise ApiError(415, "send a JSON body with 'Content-Type: application/json'")
        data = request.get_json(silent=True)
        if data is None:
            raise ApiError(400, "the body is not valid JSON")
        return data

    @app.get("/")
    def index() -> Any:
        resp = send_file(STATIC / "index.html", mimetype="text/html")
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    @app.get("/api/health")
    def health() -> Any:
        return jsonify(ok=True)

    @app.get("/api/me")
    def me() -> Any:
        return jsonify(project.me(annotator()))

    @app.post("/api/next")
    def next_task() -> Any:
        who = annotator()
        return jsonify(project.next_task(who))

    @app.post("/api/answer")
    def answer() -> Any:
        who = annotator()
        return jsonify(project.answer(who, body()))

    @app.post("/api/skip")
    def skip() -> Any:
        who = annotator()
        return jsonify(project.skip(who, body()))

    @app.post("/api/undo")
    def undo() -> Any:
        who = annotator()
        if request.get_data():
            data = body()
            if data != {}:
                raise ApiError(400, "undo takes an empty JSON object {} (it undoes your last "
                               "answer)")
        return jsonify(project.undo(who))

    @app.get("/api/image")
    def image() -> Any:
        who = annotator()
        if set(request.args) != {"id"}:
            raise ApiError(400, "give exactly one query parameter: ?id=<image id>")
        data = project.image_png(who, request.args["id"])
        return Response(data, mimetype="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    return app


def serve(project: Project, host: str = "127.0.0.1", port: int = 8765,
          port_file: str | Path | None = None, quiet: bool = False) -> None:
    """Serve the app until interrupted (Werkzeug's threaded server: a local app for a few
    annotators; requests are serialised by the project's lock anyway).

    Args:
        project: The project.
        host: Address to bind (loopback by default; anything else exposes the tokens to the
            network unencrypted).
        port: Port (0: a free one).
        port_file: Write the port there once listening (atomically), for scripts and tests.
        quiet: No request log.
    """
    import logging

    from werkzeug.serving import make_server

    from bow_gym.io_utils import atomic_write_bytes

    if quiet:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server(host, port, create_app(project), threaded=True)
    actual = server.socket.getsockname()[1]
    print(f"bow-gym annotate: {project.config.name} ({len(project.ids)} images, agent "
          f"{project.config.agent}) at http://{host}:{actual}/  (replayed "
          f"{project.engine.seq} events in {project.replay_seconds:.1f} s)", flush=True)
    if port_file:
        atomic_write_bytes(port_file, str(actual).encode())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        project.close()
