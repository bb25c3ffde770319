"""A moto S3 server on 127.0.0.1 and the environment that points s3fs (and subprocesses) at it.

`serial=True` serves one request at a time: real S3 applies a conditional PUT atomically, while moto's
threaded server checks the condition and stores the object in two steps another thread can split.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

_PROXIES = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
            "all_proxy")


@contextlib.contextmanager
def moto_server(bucket: str, serial: bool = False) -> Iterator[str]:
    """Start a server holding `bucket`; yields its endpoint URL; stops it after."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server_class = ThreadedMotoServer
    if serial:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        class SerialMotoServer(ThreadedMotoServer):
            def _server_entry(self) -> None:
                app = DomainDispatcherApplication(create_backend_app)
                self._server = make_server(self._ip_address, self._port, app, threaded=False,
                                           request_handler=MotoRequestHandler)
                self._server_ready_event.set()
                self._server.serve_forever()

        server_class = SerialMotoServer
    werkzeug = logging.getLogger("werkzeug")  # moto's request log would land in CliRunner's stderr
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    server = server_class(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        with contextlib.suppress(FileExistsError):  # moto's buckets live in this process, shared by its servers
            s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
        yield endpoint
    finally:
        server.stop()
        werkzeug.setLevel(level)
        s3fs.S3FileSystem.clear_instance_cache()


def point_s3_at(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The environment a user's s3:// command would see, aimed at the loopback server only (no real
    credentials, profiles or proxies), for this process and the subprocesses it starts."""
    import fsspec.config
    import s3fs

    for name in _PROXIES:
        monkeypatch.delenv(name, raising=False)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true"),
                        ("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config")),
                        ("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials")),
                        ("AWS_ENDPOINT_URL", endpoint),  # botocore's own override, in case fsspec's is lost
                        ("FSSPEC_S3_ENDPOINT_URL", endpoint), ("NO_PROXY", "127.0.0.1,localhost")):
        monkeypatch.setenv(name, value)
    # fsspec reads FSSPEC_S3_ENDPOINT_URL only when it is imported, so its config is set directly as well.
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
