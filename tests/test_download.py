"""``mirex-vi download``: yt-dlp's generic extractor fetching WAVs from a server on 127.0.0.1
(``--url-template``): success, 404, truncation, a kill and a rerun, the rate limit, and
straight into a pooled store. Nothing reaches beyond 127.0.0.1: sockets are guarded in this
process (``GUARD``) and in the command's subprocesses (the same code as a sitecustomize)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli
from mirex_vi.features.pooled import PooledStore
from mirex_vi.core.lock import writing
from mirex_vi.io.download import ERRORS_FILE, read_failures
from mirex_vi.io.metadata import items_from_metadata
from mirex_vi.io.ytdlp import TEMP_MARK, classify
from mirex_vi.synth import random_melody, write_audio

pytest.importorskip("yt_dlp")

SR, SECONDS = 22050, 2
IDS = [f"{c}{c}track{i:04d}" for c in "ab" for i in range(3)]  # 11 characters, as YouTube's

# Sockets may connect to loopback (and Unix sockets) only; a lookup of any other name fails.
GUARD = textwrap.dedent('''
    import socket

    LOOPBACK = ("127.0.0.1", "::1", "localhost")
    _connect, _connect_ex, _getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                           socket.getaddrinfo)

    def _check(host):
        if host not in LOOPBACK:
            raise ConnectionRefusedError(f"the tests reach nothing beyond 127.0.0.1 ({host})")

    def connect(self, address):
        if isinstance(address, tuple):
            _check(address[0])
        return _connect(self, address)

    def connect_ex(self, address):
        if isinstance(address, tuple):
            _check(address[0])
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        _check(host.decode() if isinstance(host, bytes) else host)
        return _getaddrinfo(host, *args, **kwargs)
''')


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    guard: dict = {}
    exec(GUARD, guard)
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, guard[name])
    monkeypatch.setattr(socket, "getaddrinfo", guard["getaddrinfo"])
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.setenv(var, "http://192.0.2.1:9")  # TEST-NET-1: routes nowhere
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (name -> bytes) as ``/<name>.wav``; 404 for anything else. Names in
    ``truncated`` get half their bytes under the full Content-Length; every body is sent in
    ``chunks`` pieces ``delay_s`` apart. ``requests`` lists the paths asked for, ``headers``
their headers."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.truncated, self.delay_s, self.chunks = files, set(), 0.0, 1
        self.requests: list[str] = []
        self.headers: list = []

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{{id}}.wav"

    def handle_error(self, request, client_address) -> None:
        pass  # yt-dlp closes connections it has read enough of


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server: Server = self.server
        path = urlsplit(self.path).path  # a proxy is asked for the whole URL
        server.requests.append(path)
        server.headers.append(self.headers)
        name = path.lstrip("/").removesuffix(".wav")
        if name not in server.files:
            self.send_error(404)
            return
        data = server.files[name]
        body = data[: len(data) // 2] if name in server.truncated else data
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        step = -(-len(body) // server.chunks)
        for start in range(0, len(body), step):
            time.sleep(server.delay_s)
            self.wfile.write(body[start : start + step])
            self.wfile.flush()
        self.close_connection = len(body) < len(data)


def wav_bytes(folder: Path, seed: int, seconds: float = SECONDS) -> bytes:
    """A 16-bit WAV of ``synth.random_melody(seed)``."""
    path = write_audio(folder / f"{seed}.wav", random_melody(seed, seconds, SR), SR,
                       subtype="PCM_16")
    return path.read_bytes()


@pytest.fixture()
def server(tmp_path):
    srv = Server({yid: wav_bytes(tmp_path / "served", i) for i, yid in enumerate(IDS)})
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def metadata(path: Path, ids: list[str]) -> Path:
    cliques = {f"C-{i}": [{"version_id": f"V-{i}{j}", "youtube_id": yid}
                          for j, yid in enumerate(ids[i : i + 2])] for i in range(0, len(ids), 2)}
    path.write_text(json.dumps(cliques), encoding="utf-8")
    return path


def fetch(meta: Path, root: Path, server: Server, *extra) -> tuple[int, str]:
    return run_cli("download", meta, root, "--url-template", server.template, "--rate-limit",
                   "0", "--backoff", "0", "--quiet", *extra)


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TEMP_MARK in p.name or p.name.endswith(".tmp")]


def test_fetches_into_the_layout_extract_reads(tmp_path, server):
    meta = metadata(tmp_path / "meta.json", IDS)
    code, out = fetch(meta, tmp_path / "root", server, "--workers", "3")
    assert code == 0, out
    assert f"fetched {len(IDS)}, already there 0, failed 0" in out
    for yid, path in items_from_metadata(meta, tmp_path / "root"):
        assert path == tmp_path / "root" / "audio" / yid[:2] / f"{yid}.wav"
        samples, rate = sf.read(path)
        assert rate == SR and len(samples) == SECONDS * SR
    assert not leftovers(tmp_path / "root") and not (tmp_path / "root" / ERRORS_FILE).exists()
    server.requests.clear()
    code, out = fetch(meta, tmp_path / "root", server)
    assert code == 0 and f"fetched 0, already there {len(IDS)}" in out, out
    assert server.requests == []


def test_404_and_truncation_are_recorded_and_the_rest_fetched(tmp_path, server):
    meta = metadata(tmp_path / "meta.json", [*IDS, "gone0000000"])
    server.truncated.add(IDS[1])
    code, out = fetch(meta, tmp_path / "root", server, "--retries", "1")
    assert code == 0, out
    assert f"fetched {len(IDS) - 1}, already there 0, failed 2 (not-found 1, truncated 1" in out
    failures = read_failures(tmp_path / "root" / ERRORS_FILE)
    assert {yid: kind for yid, (kind, _) in failures.items()} == {"gone0000000": "not-found",
                                                                  IDS[1]: "truncated"}
    assert "404" in failures["gone0000000"][1]
    assert not list((tmp_path / "root" / "audio").rglob(f"*{IDS[1]}*"))  # nothing counted done
    assert server.requests.count(f"/{IDS[1]}.wav") >= 2  # retried once (the generic
    # extractor reads the page once, then downloads)
    assert not leftovers(tmp_path / "root")

    # A rerun asks again for the truncated version only, not for the one that is gone.
    server.truncated.clear()
    server.requests.clear()
    code, out = fetch(meta, tmp_path / "root", server)
    assert code == 0 and "fetched 1, already there 5, failed 1 (not-found 1; 1 in an earlier" in out
    assert {p for p in server.requests} == {f"/{IDS[1]}.wav"}
    assert list(read_failures(tmp_path / "root" / ERRORS_FILE)) == ["gone0000000"]


def test_everything_failing_exits_1_and_bad_input_2(tmp_path, server, monkeypatch):
    meta = metadata(tmp_path / "meta.json", ["gone0000000", "gone0000001"])
    code, out = fetch(meta, tmp_path / "root", server)
    assert code == 1 and "error: none of the 2 versions could be fetched" in out, out
    code, out = run_cli("download", meta, tmp_path / "root", "--url-template", "http://x/")
    assert code == 2 and "error: --url-template" in out
    code, out = fetch(meta, tmp_path / "root", server, "--audio-quality", "96K")
    assert code == 2 and "error: --audio-quality needs --audio-format" in out
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, out = fetch(tmp_path / "bad.json", tmp_path / "root", server)
    assert code == 2 and "error:" in out and "not Discogs-VI-YT metadata" in out
    with writing(tmp_path / "root"):  # another run's
        code, out = fetch(meta, tmp_path / "root", server)
    assert code == 2 and "error: " in out and "is being written by another process" in out
    monkeypatch.setitem(sys.modules, "yt_dlp", None)  # as if not installed
    code, out = fetch(meta, tmp_path / "root", server)
    assert code == 2 and "error: yt-dlp is not installed: pip install 'mirex-vi[download]'" in out


def test_nothing_beyond_loopback(tmp_path):
    """The guard is on: a version elsewhere fails as a network error, and is recorded."""
    meta = metadata(tmp_path / "meta.json", IDS[:1])
    code, out = run_cli("download", meta, tmp_path / "root", "--url-template",
                        "http://192.0.2.1:9/{id}.wav", "--retries", "0", "--rate-limit", "0")
    assert code == 1, out
    (kind, message), = read_failures(tmp_path / "root" / ERRORS_FILE).values()
    assert kind == "network", message


def test_cookies_and_proxy_reach_yt_dlp(tmp_path, server):
    """The media's host is unresolvable: only the proxy (the server) can fetch it. The
    cookie is sent, and the user's cookies file is left as it was."""
    meta = metadata(tmp_path / "meta.json", IDS[:1])
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n"
                       "media.invalid\tFALSE\t/\tFALSE\t0\tsession\tsecret42\n")
    before = cookies.read_bytes()
    code, out = run_cli("download", meta, tmp_path / "root", "--url-template",
                        "http://media.invalid/{id}.wav", "--rate-limit", "0", "--quiet",
                        "--proxy", f"http://127.0.0.1:{server.server_address[1]}",
                        "--cookies", cookies)
    assert code == 0 and "fetched 1" in out, out
    assert {h["Host"] for h in server.headers} == {"media.invalid"}
    assert all("session=secret42" in h.get("Cookie", "") for h in server.headers)
    assert cookies.read_bytes() == before


def test_rate_limit_spaces_the_starts(tmp_path, server):
    meta = metadata(tmp_path / "meta.json", IDS[:4])
    start = time.monotonic()
    code, out = run_cli("download", meta, tmp_path / "root", "--url-template", server.template,
                        "--rate-limit", "60", "--workers", "4", "--quiet")
    elapsed = time.monotonic() - start
    assert code == 0 and "fetched 4" in out, out
    assert elapsed >= 3.0  # 4 starts at 60 a minute: the last one 3 s after the first
    assert elapsed < 10.0


def command(tmp_path: Path, server: Server, *args) -> tuple[list[str], dict]:
    """``mirex-vi download ...`` for a subprocess, and its environment: the socket guard as
    a sitecustomize, and the proxies of this process's ``loopback_only``."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        GUARD + "socket.socket.connect, socket.socket.connect_ex = connect, connect_ex\n"
        "socket.getaddrinfo = getaddrinfo\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return [sys.executable, "-m", "mirex_vi", "download", *map(str, args), "--url-template",
            server.template, "--rate-limit", "0", "--workers", "1", "--quiet"], env


def stop_midway(cmd: list[str], env: dict, root: Path, signum: int,
                after_first: bool) -> subprocess.CompletedProcess:
    """Run ``cmd`` and send ``signum`` while a file is half written (the second, with
    ``after_first``); returns the finished process and the whole files it had written."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        landed = _wait_for(lambda: [p for p in (root / "audio").rglob("*.wav")
                                    if not p.name.startswith(".")], 60) if after_first else []
        _wait_for(lambda: list((root / "audio").rglob(f"*{TEMP_MARK}*")), 30)
    finally:
        proc.send_signal(signum)
        _, stderr = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, landed, stderr)


def test_kill_midway_then_rerun(tmp_path, server):
    """SIGKILL while a file is half written; the rerun sweeps it, keeps what landed and
    fetches only the rest."""
    meta = metadata(tmp_path / "meta.json", IDS)
    root = tmp_path / "root"
    cmd, env = command(tmp_path, server, meta, root)
    server.delay_s, server.chunks = 0.1, 8  # about 0.8 s a file
    landed = stop_midway(cmd, env, root, signal.SIGKILL, after_first=True).stdout
    assert len(landed) == 1 and leftovers(root)  # one whole file, one half-written

    server.delay_s, server.chunks = 0.0, 1
    server.requests.clear()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"fetched {len(IDS) - 1}, already there 1, failed 0" in rerun.stderr
    assert f"/{landed[0].stem}.wav" not in server.requests
    assert not leftovers(root)
    for _, path in items_from_metadata(meta, root):
        assert sf.info(path).frames == SECONDS * SR


def test_sigterm_leaves_no_temporaries(tmp_path, server):
    root = tmp_path / "root"
    cmd, env = command(tmp_path, server, metadata(tmp_path / "meta.json", IDS), root)
    server.delay_s, server.chunks = 0.5, 8  # a download in progress for 4 s
    stopped = stop_midway(cmd, env, root, signal.SIGTERM, after_first=False)
    assert stopped.returncode == 143, stopped.stderr
    assert "error: stopped by SIGTERM; the files already fetched stay" in stopped.stderr
    assert not leftovers(root)


def _wait_for(found, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = found()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_pooled_store_keeps_features_not_audio(tmp_path, server):
    meta = metadata(tmp_path / "meta.json", [*IDS[:3], "gone0000000"])
    store = tmp_path / "store"
    code, out = fetch(meta, tmp_path / "root", server, "--pooled-store", store,
                      "--cqt-workers", "1")
    assert code == 0, out
    assert "fetched 3, already there 0, failed 1 (not-found 1" in out
    assert f"pooled store {store}: 3 versions" in out
    opened = PooledStore.open(store)
    assert sorted(opened.entries) == sorted(IDS[:3])
    assert opened.pooled(IDS[0]).shape[1] == 84
    assert not list((tmp_path / "root" / "audio").rglob("*.wav"))  # deleted once stored
    assert not (store / ".pending").exists()

    # A rerun with one more version adds it; the first three keep their rows.
    rows_before = np.load(store / "pooled.u8.npy").copy()
    meta = metadata(tmp_path / "meta.json", IDS[:4])
    code, out = fetch(meta, tmp_path / "root", server, "--pooled-store", store,
                      "--cqt-workers", "1")
    assert code == 0 and "fetched 1, already there 3" in out, out
    assert len(PooledStore.open(store)) == 4
    assert np.array_equal(np.load(store / "pooled.u8.npy")[: len(rows_before)], rows_before)


@pytest.mark.parametrize("message, kind", [
    ("[youtube] x: Private video. Sign in if you've been granted access", "private"),
    ("[youtube] x: Video unavailable", "unavailable"),
    ("[youtube] x: This video has been removed by the uploader", "removed"),
    ("[youtube] x: The uploader has not made this video available in your country", "geo-blocked"),
    ("[generic] x: Unable to download webpage: HTTP Error 404: Not Found", "not-found"),
    ("[download] Got error: 44122 bytes read, 44122 more expected", "truncated"),
    ("[youtube] x: Requested format is not available", "format"),
    ("HTTP Error 429: Too Many Requests", "throttled"),
    ("Something new", "other"),
])
def test_failure_kinds(message, kind):
    assert classify(message) == kind
