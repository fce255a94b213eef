"""The web UI against hostile files and hostile pages: a real `mtk ui` on 127.0.0.1, driven
over HTTP by gradio's own client, two visitors side by side."""

from __future__ import annotations

import http.client
import zipfile

import pytest
from test_ui_session import two_models

from conftest import running_ui

gradio_client = pytest.importorskip("gradio_client")


def zip_with_pickle(path, data_pkl: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui")
    root = base / "models"
    two_models(root)
    checkpoints = root / "Stable-diffusion"
    # BUILD on torch.FloatStorage: would change how every later file is read.
    zip_with_pickle(
        checkpoints / "evil.ckpt", b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeNsb."
    )
    # A million-deep tuple as a dict key: CPython crashes hashing it, in C.
    zip_with_pickle(checkpoints / "deep.ckpt", b"\x80\x02})" + b"\x85" * 1_000_000 + b"K\x01s.")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes((checkpoints / "other.safetensors").read_bytes())
    (checkpoints / "link.safetensors").symlink_to(outside / "secret.safetensors")
    with running_ui(root) as (port, process):
        yield port, process


def request(port: int, host: str, method: str = "GET", path: str = "/") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(
        method,
        path,
        body=b"{}" if method == "POST" else None,
        headers={
            "Host": host,
            "Origin": f"http://{host}",
            "Content-Type": "application/json",
        },
    )
    response = connection.getresponse()
    return response.status, response.read().decode("utf-8", "replace")


def test_requests_for_another_host_are_refused(server):
    port, _ = server
    assert request(port, f"127.0.0.1:{port}")[0] == 200
    assert request(port, f"localhost:{port}")[0] == 200
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        status, body = request(port, host)
        assert status == 403, host
        assert "is not this server" in body
        status, _ = request(port, host, "POST", "/gradio_api/queue/join")
        assert status == 403, host


def client(port: int):
    return gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)


def test_symlinks_out_of_the_folders_are_never_offered(server):
    port, _ = server
    sources, _ = client(port).predict(api_name="/on_refresh")
    labels = [
        choice[0] if isinstance(choice, list | tuple) else choice for choice in sources["choices"]
    ]
    assert "Stable-diffusion/model.safetensors" in labels
    assert not any("link" in label for label in labels)


def test_a_hostile_file_harms_neither_the_server_nor_another_visitor(server):
    port, process = server
    attacker, visitor = client(port), client(port)
    result = attacker.predict("Stable-diffusion/evil.ckpt", "FP16", api_name="/on_load")
    assert "sets the state of a class or function" in result[-1]
    result = attacker.predict("Stable-diffusion/deep.ckpt", "FP16", api_name="/on_load")
    assert "nests deeper than 200 levels" in result[-1]
    assert process.poll() is None  # the server is alive
    result = visitor.predict("Stable-diffusion/model.safetensors", "FP16", api_name="/on_load")
    assert "SD-v1" in result[0], result[-1]
    # The Advanced tab reads every file's header: the hostile ones are left out, quietly.
    classes = visitor.predict("SD-v1", api_name="/on_arch")
    assert "**Error" not in classes[-1]
    result = attacker.predict("Stable-diffusion/other.safetensors", "FP16", api_name="/on_load")
    assert "SD-v1" in result[0], result[-1]


@pytest.mark.parametrize(
    ("header", "bound", "allowed"),
    [
        ("127.0.0.1:7860", "127.0.0.1", True),
        ("localhost:7860", "127.0.0.1", True),
        ("[::1]:7860", "127.0.0.1", True),
        ("evil.example:7860", "127.0.0.1", False),
        ("127.0.0.1:7861", "127.0.0.1", False),  # another port: another server
        ("192.168.1.5:7860", "0.0.0.0", True),  # all interfaces: any address literal
        ("evil.example:7860", "0.0.0.0", False),  # but never a name
        ("mybox:7860", "mybox", True),
        ("other:7860", "mybox", False),
    ],
)
def test_which_host_headers_are_this_server(header, bound, allowed):
    from model_toolkit.ui.server import allowed_host

    assert allowed_host(header, bound, 7860) is allowed
