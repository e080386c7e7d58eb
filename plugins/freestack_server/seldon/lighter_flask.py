"""Per-request costs of Seldon's Flask app that the model server skips, through Flask's own extension
points; what a request gets back keeps its meaning (``bench/serve`` measures each). Config
``lighter_app: false`` turns them off. Runs in the serving environment. (flask_cors, whose hook ran on
every response, is gone: the request checks answer CORS, :mod:`freestack_server.seldon.request_checks`.)
"""

from __future__ import annotations


def lighter_flask(app) -> None:
    """Three per-request costs of Flask and werkzeug that Seldon's app pays for nothing, through their
    documented extension points; what any request gets back does not change.

    - ``Flask.ensure_sync`` ("override this method to change how the app runs async views") inspects
      every view, before-request and after-request function on every request to see whether it is a
      coroutine function; the answer for a given function is remembered instead.
    - Seldon's ``get_request`` reads ``request.form`` on every request, which builds a form parser
      just to find out that a JSON body has no form fields; the request class says so up front
      (``want_form_data_parsed``), and ``form`` and ``files`` are the same empty dicts as before.
    - Without a secret key (Seldon sets none) the session is an empty, read-only ``NullSession`` that
      is never saved; one is shared instead of one built per request (``session_interface``).
    """
    ensure_sync = app.ensure_sync
    known: dict = {}

    def remembered(func):
        try:
            return known[func]
        except KeyError:
            done = ensure_sync(func)
            if len(known) < 1000:
                known[func] = done
            return done
        except TypeError:  # not hashable
            return ensure_sync(func)

    app.ensure_sync = remembered

    class Request(app.request_class):
        @property
        def want_form_data_parsed(self) -> bool:
            return self.mimetype != "application/json" and super().want_form_data_parsed

    app.request_class = Request

    from flask.sessions import SecureCookieSessionInterface

    if type(app.session_interface) is SecureCookieSessionInterface:

        class Sessions(SecureCookieSessionInterface):
            null = SecureCookieSessionInterface.null_session_class()

            def open_session(self, app_, request_):
                return super().open_session(app_, request_) if app_.secret_key else None

            def make_null_session(self, app_):
                return self.null

        app.session_interface = Sessions()


def faster_json(app) -> bool:
    """Flask's JSON provider (``app.json``, Flask's documented extension point) backed by orjson, for
    the request bodies Seldon's ``get_request`` parses and the answers its ``jsonify`` writes.

    Anything orjson refuses falls back to Flask's own provider, so what a request gets back keeps its
    meaning: a body with ``NaN`` or integers beyond 64 bits still parses (and our checks then answer
    it with their own message), a value orjson cannot write is written by ``json.dumps``. Keys are
    no longer sorted and the answer has no trailing newline. Returns False, changing nothing, when
    orjson is not installed or the app pretty-prints (debug)."""
    try:
        import orjson
    except ImportError:
        return False
    from flask.json.provider import DefaultJSONProvider

    if type(app.json) is not DefaultJSONProvider or app.debug or app.json.compact is False:
        return False
    fallback = app.json

    class OrjsonProvider(DefaultJSONProvider):
        def dumps(self, obj, **kwargs):
            if not kwargs or kwargs == {"separators": (",", ":")}:
                try:
                    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()
                except TypeError:  # orjson.JSONEncodeError is a TypeError
                    pass
            return fallback.dumps(obj, **kwargs)

        def loads(self, s, **kwargs):
            if not kwargs:
                try:
                    return orjson.loads(s)
                except orjson.JSONDecodeError:
                    pass  # NaN, Infinity, huge integers, ...: Python's json decides
            return fallback.loads(s, **kwargs)

        def response(self, *args, **kwargs):
            obj = self._prepare_response_obj(args, kwargs)
            try:
                body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
            except TypeError:
                return fallback.response(*args, **kwargs)
            return self._app.response_class(body, mimetype=self.mimetype)

    app.json = OrjsonProvider(app)
    return True


__all__ = ["faster_json", "lighter_flask"]
