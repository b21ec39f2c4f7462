"""``scenecls serve``: a trained model behind HTTP."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import option, project_option, trust_model_option
from scenecls.cli.output import Output
from scenecls.command_options import ServeOptions

SETTINGS = ("host", "port", "max_batch", "max_wait", "max_queue", "max_body", "max_megapixels",
            "decode_timeout", "client_timeout", "top_k", "min_confidence")  # fmt: skip


def _serve_options(func):
    for name in reversed(SETTINGS):
        func = option(name, ServeOptions)(func)
    return func


@click.command("serve")
@click.argument("model_ref", required=False, metavar="[RUN|EXPORT]")
@_serve_options
@click.option(
    "--keras",
    is_flag=True,
    help="Serve a run's best.keras even when a fresh export of it (ONNX, OpenVINO, LiteRT: faster) is there.",
)
@trust_model_option
@project_option()
@click.pass_obj
def serve(
    out: Output, model_ref: str | None, keras: bool, trust_model: bool, project: Path, **settings
) -> None:
    """Answer HTTP requests with a model: a run (the latest by default) or an exported model.

    \b
    POST /predict   images as multipart files, JSON base64 or one raw image/* body
    GET  /health    whether it answers, and its queue
    GET  /metadata  classes, input size, fingerprint, runtime, accuracy
    GET  /docs      the OpenAPI page

    Concurrent requests are batched through the model; the queue, body size, image size, decode time and
    slow clients are limited. It listens on 127.0.0.1 unless --host says otherwise. The address is printed
    on stdout, one line per request is logged on stderr.
    """
    from scenecls.runs import resolve_model
    from scenecls.runtimes import fastest_for_batches, needs_tensorflow
    from scenecls.serving.model import load_served_model
    from scenecls.serving.server import bind, check_installed
    from scenecls.serving.server import serve as run_server

    check_installed()
    options = ServeOptions(**settings)
    if options.host not in ("127.0.0.1", "localhost", "::1"):
        out.warn(f"--host {options.host}: the server answers other machines too, with no authentication")
    sock = bind(options.host, options.port)  # a port in use is said before the model loads
    try:
        model_path, run_dir = resolve_model(model_ref, project)
        if not keras and not (model_ref and Path(model_ref).is_file()):  # a run: its fastest fresh export
            model_path = fastest_for_batches(model_path, warn=out.warn)
        if needs_tensorflow(model_path):
            out.load_tensorflow()
        served = load_served_model(model_path, run_dir, batch_size=options.max_batch, trust_model=trust_model)
    except BaseException:
        sock.close()
        raise

    def say(line: str, url: str) -> None:
        out.log(line)
        click.echo(url)  # stdout: the address, for a script that started it with --port 0

    run_server(served, options, say=say, sock=sock, log_requests=not out.quiet)
