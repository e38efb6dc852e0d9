"""How pictures and figures leave a handler: drawn and filed on the thread that made them, and published by
rename into Gradio's cache so that no visitor is ever served a half-written file.
"""

from __future__ import annotations

import functools
import inspect
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import gradio as gr
from gradio import processing_utils
from gradio import utils as gradio_utils
from gradio.components.plot import PlotData
from gradio.data_classes import ImageData
from matplotlib.figure import Figure
from PIL import Image as PILImage

from explainer.checks import Superseded
from explainer.sessions import EVENT_TICKET, RUN_TICKETS, visitor

# Gradio's default WebP is lossy (a faint difference map or a thin plot line would show compression noise) and
# takes ~3x as long to encode as PNG for these small pictures: ~55 ms of a scrub's 9 images against ~20 ms
LOSSLESS = "png"


def _cache_image_atomically(image, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """gradio.processing_utils.save_pil_to_cache, published by rename instead of rewritten in place.

    Gradio 6.31 names a returned picture by its content hash and writes it with a truncating write_bytes: two
    visitors shown the same picture at once (the same seed and block) could each fetch the file while the other
    rewrote it, and get an empty image. A file is written here once, beside its final name, and renamed into place.
    """
    data = processing_utils.encode_pil_to_bytes(image, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = folder / f"{name}.{format}"
    if path.exists():
        os.utime(path)  # delete_cache ages files by ctime: a picture handed out again must live as long again
    else:
        handle, staging = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
        with os.fdopen(handle, "wb") as staged:
            staged.write(data)
        os.replace(staging, path)
    return str(path.resolve())


processing_utils.save_pil_to_cache = _cache_image_atomically


def figures_drawn(handler):
    """`handler` with the matplotlib figures it returns drawn as it returns (`drawn`), on its own thread."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        result = handler(*args, **kwargs)
        return tuple(map(drawn, result)) if isinstance(result, tuple) else drawn(result)

    return wrapped


def drawn(value):
    """A matplotlib figure as the PNG gr.Plot sends (anything else as it is), drawn now.

    Left to gr.Plot, a figure is drawn in Gradio's postprocessing, after the handler has returned. For a handler on
    the network thread, that is when the idle-time guesses start, and a guess's Python competes with matplotlib's for
    the GIL: the drift plot took 108-143 ms there, against 53-84 ms with guessing off.
    """
    if not isinstance(value, Figure):
        return value
    try:
        return PlotData(type="matplotlib", plot=processing_utils.encode_plot_to_base64(value, LOSSLESS))
    finally:
        plt.close(value)


def pictures_filed(handler):
    """`handler` with the pictures it returns filed as Gradio's Image would (`filed`), for an event registered with
    `postprocess=False`.

    Gradio postprocesses each output of an event on a worker thread of its own, then checks and files each picture
    twice (for the session's copy of the page and for the reply), resolving its path against every allowed and
    static folder each time: 20 ms of a scrub's 25 server side, for 9 pictures and a caption that the handler made in
    1.3 ms. Without postprocessing, Gradio files each picture once.
    """

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        return tuple(map(filed, handler(*args, **kwargs)))

    return wrapped


def filed(value):
    """A PIL picture as the lossless file gr.Image sends (anything else as it is)."""
    if not isinstance(value, PILImage.Image):
        return value
    path = processing_utils.save_pil_to_cache(value, cache_dir=gradio_utils.get_upload_folder(), format=LOSSLESS)
    return ImageData(path=path, orig_name=Path(path).name).model_dump()


def receiving_event(handler, inputs: int):
    """`handler(*inputs, payload)` as a Gradio listener handed the event's data (a custom gr.HTML event's payload).

    Gradio finds where to pass gr.EventData by a positional parameter's annotation, which a wrapped or partial
    handler (one taking *inputs) does not show; this listener declares exactly `inputs` parameters and the event."""

    def listener(*values):
        *given, event = values
        payload = getattr(event, "_data", None)
        return handler(*given, payload if isinstance(payload, dict) else {})

    parameters = [inspect.Parameter(f"input_{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(inputs)]
    listener.__signature__ = inspect.Signature([*parameters, inspect.Parameter("event", inspect.Parameter.POSITIONAL_OR_KEYWORD)])
    listener.__annotations__ = {"event": gr.EventData}
    listener.__name__ = getattr(handler, "__name__", "listener")
    return listener


def unless_superseded(handler, outputs: int):
    """`handler` as a run of its visitor's (it takes a run ticket as Gradio starts it), except that a run the visitor
    superseded (checks.Superseded) leaves every output as it is and ends as a success: Gradio 6.31's page then sends
    the newest request it held back for that event (trigger_mode="always_last"), which it drops after a failure."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        token = EVENT_TICKET.set(RUN_TICKETS.take(visitor()))  # before the wait for the network thread
        try:
            return handler(*args, **kwargs)
        except Superseded:
            return tuple(gr.skip() for _ in range(outputs)) if outputs > 1 else gr.skip()
        finally:
            EVENT_TICKET.reset(token)

    return wrapped
