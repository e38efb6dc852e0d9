"""The step viewer: one gr.HTML panel that shows a run of A and B, and A − B, at any step of the reverse process.

`frames_payload(a, b)` turns two trajectories into the panel's value, built once per run: for every network
and every kind of picture (x̂0, x_t, ε̂) one PNG sprite sheet holding each scrubber position's grid of the
batch, plus the per-step timesteps, colour ranges and drift curves. `build_viewer()` makes the panel; its
script draws every step from those sheets in the browser, so scrubbing never asks the server for anything.
It reports back only what the server needs: the step once the scrubber settles (`viewer.step`), the sample
a student clicks (`viewer.sample`), and the current step in a hidden Number other events can read.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib

import gradio as gr
import numpy as np
import torch

from playground.viz import DIVERGING, colour_table, grey, tile

KINDS = ("x0", "xt", "eps")
DIFFERENCE_FLOOR = 1e-3  # a blank A − B map stays white instead of blowing up float noise
PAD = 1
PAD_INDEX = 255
# A sheet grows by a frame a step (a 1000-step run of 16 would be 115k pixels tall): past this it wraps into column
# blocks, a size every browser decodes and draws from.
MAX_SHEET_SIDE = 16384
# The diverging map less one of its two middle entries: 255 colours, zero exactly at index 127, −range at 0
# and +range at 254, which frees index 255 for the white padding.
DIVERGING_PALETTE = np.concatenate([np.delete(colour_table(DIVERGING), 128, axis=0), [[255, 255, 255]]]).astype(np.uint8)


def diverging_index(values: np.ndarray, vmax) -> np.ndarray:
    """Signed values -> palette indices 0..254 of DIVERGING_PALETTE over ±vmax (clipped)."""
    return np.clip(np.rint((values / vmax + 1) * 127), 0, 254).astype(np.uint8)


def _positions(run) -> dict[str, torch.Tensor]:
    """x̂0, x_t and ε̂ at every scrubber position 0..S; position S is the finished sample, with the last ε̂."""
    return {"x0": torch.cat([run.x0, run.final[None]]), "xt": run.x_t, "eps": torch.cat([run.eps, run.eps[-1:]])}


def _signed_view(values: torch.Tensor) -> torch.Tensor:
    """(N, B, C, H, W) -> (N, B, H, W): the one channel, or for RGB the mean over channels (one diverging map)."""
    return values[:, :, 0] if values.shape[2] == 1 else values.mean(2)


def _ranges(values: torch.Tensor, floor: float) -> torch.Tensor:
    """(N, ...) -> (N,) symmetric range ±max|v| of each position."""
    return values.abs().flatten(1).amax(1).clamp_min(floor)


def _sheet(pixels: np.ndarray, columns: int) -> tuple[np.ndarray, dict]:
    """(N, B, H, W[, 3]) uint8 -> one image of every position's grid of the batch, and its layout.

    Rows are interleaved: row y of position k sits at sheet row y·P + k (P = frames_per_column; past P positions
    the next column block starts). The row above a pixel is then the same pixel one step earlier, which PNG's
    "up" filter turns into small numbers: a reverse process changes little from step to step.
    """
    frames = np.stack([tile(list(frame), columns, pad=PAD, fill=PAD_INDEX) for frame in pixels])
    count, frame_height, frame_width = frames.shape[:3]
    per_column = min(count, MAX_SHEET_SIDE // frame_height)
    blocks = -(-count // per_column)
    if blocks * per_column > count:
        blank = np.full((blocks * per_column - count, *frames.shape[1:]), PAD_INDEX, np.uint8)
        frames = np.concatenate([frames, blank])
    colour = frames.shape[3:]
    sheet = (frames.reshape(blocks, per_column, frame_height, frame_width, *colour).transpose(2, 1, 0, 3, *range(4, 4 + len(colour)))
             .reshape(frame_height * per_column, blocks * frame_width, *colour))
    return sheet, {"frame": [frame_width, frame_height], "frames_per_column": per_column}


def _png_data_url(pixels: np.ndarray, palette: np.ndarray | None = None) -> str:
    """uint8 (H, W) grey or palette indices, or (H, W, 3) RGB -> PNG data URL.

    Written here rather than by PIL, which picks each row's filter itself: every row "up"-filtered (on interleaved
    sheets) and deflated run-length only, a 50-step run of 4 took 449 KiB and 27 ms to build, against PIL's 763 KiB, 65 ms.
    """
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # the "up" filter; uint8 subtraction wraps modulo 256 as PNG wants
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    deflate = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    colour_type = 2 if pixels.ndim == 3 else 0 if palette is None else 3

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
           + (b"" if palette is None else chunk(b"PLTE", palette.tobytes()))
           + chunk(b"IDAT", deflate.compress(filtered.tobytes()) + deflate.flush()) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _image_sheet(values: torch.Tensor, columns: int) -> tuple[str, dict]:
    """Images in [-1, 1] -> grey (one byte a pixel) or RGB sheet."""
    pixels = grey(values)  # (N, B, C, H, W)
    pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else np.moveaxis(pixels, 2, -1)
    sheet, layout = _sheet(pixels, columns)
    return _png_data_url(sheet), layout


def _signed_sheet(values: torch.Tensor, vmax: torch.Tensor, columns: int) -> str:
    """(N, B, H, W) signed values, ±vmax[n] at position n -> diverging palette sheet (one byte a pixel)."""
    sheet, _ = _sheet(diverging_index(values.float().numpy(), vmax.float().numpy()[:, None, None, None]), columns)
    return _png_data_url(sheet, DIVERGING_PALETTE)


def _numbers(values: torch.Tensor) -> list[float]:
    """Four significant digits: enough for a caption, and short JSON."""
    return [float(f"{v:.4g}") for v in values.tolist()]


@torch.inference_mode()
def frames_payload(a, b, *, columns: int | None = None, step: int | None = None) -> dict:
    """The viewer's value for trajectories A and B (`b is a`: nothing switched off); JSON-serialisable.

    Keys: steps S, batch, channels, b_is_a, step (where the scrubber starts), timesteps (S ints), grid {columns,
    pad, tile [w, h]}, sheet {frame [w, h], frames_per_column}, sheets {a, b, a_minus_b} of {x0, xt, eps} PNG data
    URLs (no b or a_minus_b when B is A), signed (what the diverging maps show), ranges {eps, a_minus_b {x0, xt,
    eps}} (the ± of each picture) and drift {x0, xt} (mean |A − B|). Those lists have S + 1 entries, one per
    scrubber position; position S is the finished sample.
    columns: samples per grid row; by default the grid is as square as possible, at most 4 wide (4 -> 2 × 2).
    """
    if a.x_t.shape != b.x_t.shape or len(a) != len(b):
        raise ValueError(f"A and B must have the same steps and shape, got {tuple(a.x_t.shape)} and {tuple(b.x_t.shape)}")
    steps = len(a)
    batch, channels, height, width = a.final.shape
    columns = max(1, min(columns or min(4, math.ceil(math.sqrt(batch))), batch))
    b_is_a = b is a
    at_a = _positions(a)
    at_b = at_a if b_is_a else _positions(b)
    eps_a, eps_b = _signed_view(at_a["eps"]), _signed_view(at_b["eps"])
    eps_range = torch.maximum(_ranges(eps_a, 1e-6), _ranges(eps_b, 1e-6))
    differences = {kind: _signed_view(at_a[kind] - at_b[kind]) for kind in KINDS}
    difference_ranges = {kind: _ranges(d, DIFFERENCE_FLOOR) for kind, d in differences.items()}

    def network_sheets(at, eps):
        x0, layout = _image_sheet(at["x0"], columns)
        return {"x0": x0, "xt": _image_sheet(at["xt"], columns)[0], "eps": _signed_sheet(eps, eps_range, columns)}, layout

    sheets_a, layout = network_sheets(at_a, eps_a)
    sheets = {"a": sheets_a}
    if not b_is_a:  # B is A: its pictures are A's, and A − B is zero, so neither travels again
        sheets["b"] = network_sheets(at_b, eps_b)[0]
        sheets["a_minus_b"] = {kind: _signed_sheet(differences[kind], difference_ranges[kind], columns) for kind in KINDS}
    return {
        "steps": steps, "batch": batch, "channels": channels, "b_is_a": b_is_a,
        "step": steps if step is None else min(max(int(step), 0), steps),
        "timesteps": a.timesteps.tolist(),
        "grid": {"columns": columns, "pad": PAD, "tile": [width, height]}, "sheet": layout, "sheets": sheets,
        "signed": "value" if channels == 1 else f"mean over the {channels} colour channels",
        "ranges": {"eps": _numbers(eps_range), "a_minus_b": {kind: _numbers(r) for kind, r in difference_ranges.items()}},
        "drift": {kind: _numbers((at_a[kind] - at_b[kind]).abs().flatten(1).mean(1)) for kind in ("x0", "xt")},
    }


def _gradient(palette: np.ndarray, stops: int = 9) -> str:
    colours = palette[np.linspace(0, len(palette) - 1, stops).round().astype(int)]
    return "linear-gradient(90deg, " + ", ".join(f"rgb({r}, {g}, {b})" for r, g, b in colours) + ")"


def _figure(net: str, title: str, note: str = "", overlay: str = "") -> str:
    hint = "" if overlay else ' title="click a sample to show its feature maps"'
    return (f'<figure data-net="{net}"><figcaption>{title} <small>{note}</small></figcaption><div class="uv-frame">'
            f'<canvas{hint}></canvas>{overlay}</div><div class="uv-legend"><i></i><span></span><span></span><span></span></div></figure>')


# gr.HTML runs both templates through Handlebars and a JS template literal: no backslashes, backticks or
# dollar-brace in them. The template never changes, so Gradio never re-renders over the script's DOM.
VIEWER_HTML = f"""<div class="uv" data-state="empty">
<p class="uv-empty">No run yet. Generate one: A and B start from the same noise, and every step of both shows here.</p>
<p class="uv-empty uv-error">This run could not be shown: its pictures did not decode (the browser console says why).</p>
<div class="uv-run">
 <div class="uv-bar"><div class="uv-kinds" role="group" aria-label="what the pictures show">
  <button type="button" data-kind="x0" aria-pressed="true">x̂0<span> · clean-image guess</span></button>
  <button type="button" data-kind="xt" aria-pressed="false">x_t<span> · network input</span></button>
  <button type="button" data-kind="eps" aria-pressed="false">ε̂<span> · predicted noise</span></button></div>
  <span class="uv-badge" role="status"><svg viewBox="0 0 20 20" aria-hidden="true"><circle cx="10" cy="10" r="7"><animateTransform
   attributeName="transform" type="rotate" from="0 10 10" to="360 10 10" dur="0.9s" repeatCount="indefinite"/></circle></svg>running…</span>
 </div>
 <div class="uv-stage">
  {_figure("a", '<b class="uv-a">A</b>', "intact")}{_figure("b", '<b class="uv-b">B</b>')}
  {_figure("d", '<b class="uv-a">A</b> − <b class="uv-b">B</b>', "white = identical", '<p class="uv-same">A − B is zero everywhere: B is A</p>')}
  <div class="uv-controls">
   <input type="range" class="uv-scrubber" min="0" max="1" step="1" value="1" aria-label="step of the reverse process">
   <div class="uv-row"><span class="uv-start"></span><span>finished sample</span></div>
   <p class="uv-caption"></p>
   <div class="uv-row"><span>mean |<b class="uv-a">A</b> − <b class="uv-b">B</b>| per step: x̂0 solid, x_t dashed<span class="uv-log"></span></span>
    <span class="uv-curve-top"></span></div>
   <svg class="uv-curve" viewBox="0 0 1000 100" preserveAspectRatio="none" aria-label="how far B drifts from A; click to go to a step">
    <path class="uv-xt"/><path class="uv-x0"/><line class="uv-cursor" y1="0" y2="100"/></svg>
   <div class="uv-row"><span class="uv-curve-note"></span><span class="uv-curve-bottom"></span></div>
  </div>
 </div>
</div></div>"""

VIEWER_CSS = """
.uv { --uv-a: #2563eb; --uv-b: #ea580c; container-type: inline-size; font-size: 14px; color: var(--body-text-color); }
.uv:not([data-state=run]) .uv-run, .uv:not([data-state=empty]) .uv-empty:not(.uv-error), .uv:not([data-state=error]) .uv-error { display: none; }
.uv-empty { margin: 0; padding: 40px 16px; text-align: center; border: 1px dashed var(--border-color-primary); border-radius: 8px;
  color: var(--body-text-color-subdued); }
.uv-a { color: var(--uv-a); } .uv-b { color: var(--uv-b); }
.uv-bar { position: relative; display: flex; justify-content: center; margin-bottom: 10px; }
.uv-kinds { display: inline-flex; border: 1px solid var(--border-color-primary); border-radius: 999px; overflow: hidden; }
.uv-kinds button { padding: 4px 12px; font: inherit; font-size: 13px; background: none; color: inherit; border: 0; cursor: pointer; }
.uv-kinds button + button { border-left: 1px solid var(--border-color-primary); }
.uv-kinds button[aria-pressed=true] { background: var(--body-text-color); color: var(--background-fill-primary); }
.uv-badge { visibility: hidden; position: absolute; right: 0; top: 3px; display: inline-flex; align-items: center; gap: 4px;
  font-size: 12px; padding: 2px 8px; border-radius: 999px; background: var(--background-fill-secondary); }
.uv-badge svg { width: 14px; height: 14px; }
.uv-badge circle { fill: none; stroke: currentColor; stroke-width: 3; stroke-dasharray: 30 14; }
/* busy: the busy prop, or a class "waiting" that an event's js= puts on the viewer's block (no request at all) */
.uv.is-busy .uv-badge, .waiting & .uv-badge { visibility: visible; }
.uv.is-busy .uv-stage figure, .waiting & .uv-stage figure { opacity: .55; }
.uv-stage { display: grid; grid-template-columns: repeat(3, minmax(0, 300px)); grid-template-areas: "a b d" "ctl ctl ctl";
  justify-content: center; gap: 10px 16px; }
.uv-stage figure { margin: 0; min-width: 0; transition: opacity .15s; }
[data-net=a] { grid-area: a; } [data-net=b] { grid-area: b; } [data-net=d] { grid-area: d; } .uv-controls { grid-area: ctl; min-width: 0; }
figcaption { margin: 0 0 4px; font-size: 14px; text-align: center; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
figcaption b { font-size: 16px; } figcaption small { color: var(--body-text-color-subdued); font-size: 12px; }
.uv-frame { position: relative; }
.uv-stage canvas { display: block; width: 100%; height: auto; background: #fff; border-radius: 3px;
  box-shadow: 0 0 0 1px var(--border-color-primary); }
[data-net=a] canvas { box-shadow: 0 0 0 2px var(--uv-a); cursor: pointer; } [data-net=b] canvas { box-shadow: 0 0 0 2px var(--uv-b); cursor: pointer; }
.uv-same { display: none; position: absolute; inset: 0; margin: 0; align-items: center; justify-content: center; text-align: center;
  padding: 8px; font-size: 13px; color: #475569; }
.uv.is-same .uv-same { display: flex; } .uv.is-same [data-net=d] .uv-legend { visibility: hidden; }
.uv-legend { display: grid; grid-template-columns: 1fr auto 1fr; margin-top: 6px; font-size: 12px; color: var(--body-text-color-subdued); }
.uv-legend i { grid-column: 1 / -1; height: 7px; border-radius: 2px; margin-bottom: 2px; background: DIVERGING_GRADIENT; }
.uv-legend.is-grey i { background: linear-gradient(90deg, #000, #fff); box-shadow: inset 0 0 0 1px #94a3b8; }
.uv-legend span:last-child { text-align: right; }
.uv-scrubber { display: block; width: 100%; margin: 10px 0 0; accent-color: #334155; cursor: pointer; }
.uv-row { display: flex; justify-content: space-between; gap: 8px; font-size: 12px; color: var(--body-text-color-subdued); }
.uv-caption { margin: 6px 0 8px; text-align: center; line-height: 1.4; } .uv-caption b { font-size: 15px; }
.uv-curve { display: block; width: 100%; height: 56px; cursor: pointer; border-radius: 4px; background: var(--background-fill-secondary); }
.uv-curve path { fill: none; stroke-width: 2; vector-effect: non-scaling-stroke; stroke-linejoin: round; }
.uv-x0 { stroke: #7c3aed; } .uv-xt { stroke: #94a3b8; stroke-dasharray: 4 3; }
.uv-cursor { stroke: var(--body-text-color); stroke-width: 1.5; vector-effect: non-scaling-stroke; }
@container (max-width: 620px) {
  .uv-stage { grid-template-columns: repeat(2, minmax(0, 1fr)); grid-template-areas: "a b" "ctl ctl" "d d"; gap: 8px 10px; }
  [data-net=d] { justify-self: center; width: calc(50% - 5px); margin-top: 6px; }
  .uv-kinds button { padding: 4px 14px; } .uv-kinds span { display: none; } .uv-legend { font-size: 11px; }
}
""".replace("DIVERGING_GRADIENT", _gradient(DIVERGING_PALETTE[:255]))

# build_viewer prepends `const STEP_ELEM_ID = ..., SETTLE_MS = ...;`. Every word in quotes here becomes an
# attribute of the gr.HTML in Python (that is how 'step' and 'sample' become viewer.step and viewer.sample), so
# the busy prop is never spelt in quotes: gr.update(busy=...) would otherwise carry that attribute along.
VIEWER_JS = r"""
const BUSY = Object.keys({busy: 0})[0], KINDS = ['x0', 'xt', 'eps'];
const KIND_TEXT = {x0: 'x̂0, the clean image the network predicts from x_t', xt: 'x_t, the noisy image the network is given',
  eps: 'ε̂, the noise the network predicts in x_t'};
const root = element.querySelector('.uv'), pick = (selector) => root.querySelector(selector);
const figures = Object.fromEntries([...root.querySelectorAll('[data-net]')].map((figure) => [figure.dataset.net,
  {canvas: figure.querySelector('canvas'), legend: figure.querySelector('.uv-legend')}]));
const scrubber = pick('.uv-scrubber'), caption = pick('.uv-caption'), curve = pick('.uv-curve');
let run = null, shown, failed = false, decoding = false, ticket = 0, kind = 'x0', position = 0, settleTimer, reported;
const number = (v) => String(Number(v.toPrecision(3)));

function decodeSheets(sheets) {
  return Promise.all(KINDS.map((k) => { const image = new Image(); image.src = sheets[k]; return image.decode().then(() => image); }))
    .then((images) => Object.fromEntries(KINDS.map((k, i) => [k, images[i]])));
}

function load(payload) {
  const mine = ++ticket;  // a newer value wins over a slower decode
  shown = payload;
  decoding = Boolean(payload);  // meanwhile the previous run stays on screen, dimmed
  if (!payload) { run = null; failed = false; }
  showState();
  if (!payload) return;
  const a = decodeSheets(payload.sheets.a), same = payload.b_is_a;
  Promise.all([a, same ? a : decodeSheets(payload.sheets.b), same ? null : decodeSheets(payload.sheets.a_minus_b)]).then((images) => {
    if (mine !== ticket) return;
    run = {p: payload, images: {a: images[0], b: images[1], d: images[2]}};
    position = reported = Math.min(Math.max(payload.step ?? payload.steps, 0), payload.steps);
    decoding = failed = false;
    showState();
    Object.assign(scrubber, {max: payload.steps, value: position});
    pick('.uv-start').textContent = `noise · t = ${payload.timesteps[0]}`;
    pick('[data-net=b] small').textContent = same ? 'is A: nothing switched off' : 'parts switched off';
    drawCurve(); fitCanvases(); draw(); writeHiddenStep();
  }).catch((error) => {
    if (mine !== ticket) return;
    console.error('step viewer: cannot show this run', error);
    run = null; decoding = false; failed = true; showState();
  });
}

function showState() {
  root.dataset.state = run ? 'run' : failed ? 'error' : 'empty';
  root.classList.toggle('is-busy', Boolean(props[BUSY]) || decoding);
  root.classList.toggle('is-same', Boolean(run && run.p.b_is_a));
}

function fitCanvases() {
  // about twice the on-screen pixels, every sheet pixel a whole block: crisp after any CSS scaling
  const [width, height] = run.p.sheet.frame;
  for (const {canvas} of Object.values(figures)) {
    const wanted = Math.max(4, Math.ceil(2 * (canvas.clientWidth || 300) * devicePixelRatio / width));
    const zoom = Math.min(wanted, Math.max(1, Math.floor(4096 / Math.max(width, height))));
    if (canvas.width !== width * zoom || canvas.height !== height * zoom) { canvas.width = width * zoom; canvas.height = height * zoom; }
  }
}

function setLegend(net, range) {  // range null: the grey scale of images
  figures[net].legend.classList.toggle('is-grey', range === null);
  const ends = range === null ? ['black −1', 'clipped', 'white +1'] : [`blue −${number(range)}`, 'white 0', `red +${number(range)}`];
  figures[net].legend.querySelectorAll('span').forEach((span, i) => { span.textContent = ends[i]; });
}

function draw() {
  const p = run.p, [width, height] = p.sheet.frame, perColumn = p.sheet.frames_per_column, last = position >= p.steps;
  const left = Math.floor(position / perColumn) * width, row = position % perColumn;
  for (const [net, {canvas}] of Object.entries(figures)) {
    const context = canvas.getContext('2d'), zoom = canvas.width / width, image = run.images[net] && run.images[net][kind];
    if (!image) { context.fillStyle = '#fff'; context.fillRect(0, 0, canvas.width, canvas.height); continue; }
    context.imageSmoothingEnabled = false;
    // the sheet interleaves the positions' rows (see _sheet): row y of position k is sheet row y·P + k
    for (let y = 0; y < height; y++) context.drawImage(image, left, y * perColumn + row, width, 1, 0, y * zoom, canvas.width, zoom);
  }
  for (const net of ['a', 'b']) setLegend(net, kind === 'eps' ? p.ranges.eps[position] : null);
  setLegend('d', p.ranges.a_minus_b[kind][position]);
  let text = KIND_TEXT[kind];
  if (last) text = kind === 'eps' ? 'ε̂ of the last step' : 'x̂0 and x_t both show the finished sample';
  else if (kind === 'x0' && position === 0) text = 'x̂0 at the first step: the network’s first guess at the clean image';
  if (p.channels > 1 && (kind === 'eps' || !p.b_is_a)) text += ` · ε̂ and A − B: ${p.signed}`;
  if (!p.b_is_a) text += ` · mean |x̂0 A − x̂0 B| = ${number(p.drift.x0[position])}`;
  const where = last ? 'the finished sample' : `step ${position + 1} of ${p.steps} · t = ${p.timesteps[position]}`;
  caption.replaceChildren(Object.assign(document.createElement('b'), {textContent: where}), document.createElement('br'), text);
  const x = String(position / Math.max(p.steps, 1) * 1000), cursor = curve.querySelector('.uv-cursor');
  cursor.setAttribute('x1', x); cursor.setAttribute('x2', x);
}

function drawCurve() {
  const p = run.p, lines = [p.drift.x0, p.drift.xt], positive = lines.flat().filter((v) => v > 0);
  const high = Math.max(...positive, 0), low = Math.min(...positive, high);
  const log = high > 0 && high / low >= 10;  // x̂0 differs ~100× more at the noisiest steps than near the end
  const y = (v) => 92 - 84 * (!high ? 0 : log ? Math.log(Math.max(v, low) / low) / Math.log(high / low) : v / high);
  const path = (values) => values.map((v, k) => `${k ? 'L' : 'M'}${(k / Math.max(p.steps, 1) * 1000).toFixed(1)} ${y(v).toFixed(1)}`);
  curve.querySelector('.uv-x0').setAttribute('d', path(lines[0]).join(' '));
  curve.querySelector('.uv-xt').setAttribute('d', path(lines[1]).join(' '));
  pick('.uv-log').textContent = log ? ' · log scale' : '';
  pick('.uv-curve-top').textContent = number(high);
  pick('.uv-curve-bottom').textContent = number(log ? low : 0);
  pick('.uv-curve-note').textContent = p.b_is_a ? 'B is A: switch a part of B off to see it drift' : 'click to go to a step';
}

function writeHiddenStep() {
  // the hidden gr.Number holds the step for any later event; its input event updates Gradio's copy of the value
  const input = STEP_ELEM_ID && document.querySelector(`#${CSS.escape(STEP_ELEM_ID)} input`);
  if (input && input.value !== String(position)) { input.value = String(position); input.dispatchEvent(new Event('input', {bubbles: true})); }
}

function goTo(next) {
  if (!run) return;
  position = scrubber.value = Math.min(Math.max(next, 0), run.p.steps);
  draw();
  writeHiddenStep();
  clearTimeout(settleTimer);  // the server hears of the step once the scrubber rests
  settleTimer = setTimeout(() => { if (position !== reported) trigger('step', {step: reported = position}); }, SETTLE_MS);
}

scrubber.addEventListener('input', () => goTo(Number(scrubber.value)));
curve.addEventListener('click', (event) => {
  const box = curve.getBoundingClientRect();
  if (run) goTo(Math.round((event.clientX - box.left) / box.width * run.p.steps));
});
const kindButtons = [...root.querySelectorAll('[data-kind]')];
for (const button of kindButtons) button.addEventListener('click', () => {
  kind = button.dataset.kind;
  for (const other of kindButtons) other.setAttribute('aria-pressed', String(other === button));
  if (run) draw();
});
for (const net of ['a', 'b']) {
  figures[net].canvas.addEventListener('click', (event) => {
    if (!run) return;
    const {columns, pad, tile: [tileWidth, tileHeight]} = run.p.grid, [width, height] = run.p.sheet.frame;
    const box = event.currentTarget.getBoundingClientRect();
    const x = (event.clientX - box.left) / box.width * width, y = (event.clientY - box.top) / box.height * height;
    const column = Math.min(Math.floor(x / (tileWidth + pad)), columns - 1), line = Math.floor(y / (tileHeight + pad));
    const index = line * columns + column;
    // the pixel inside that sample, for the filter at a pixel (a click on the padding takes the nearest pixel)
    const col = Math.min(Math.max(Math.floor(x - column * (tileWidth + pad)), 0), tileWidth - 1);
    const row = Math.min(Math.max(Math.floor(y - line * (tileHeight + pad)), 0), tileHeight - 1);
    if (index >= 0 && index < run.p.batch) trigger('sample', {index, step: position, row, col, net});
  });
}
new ResizeObserver(() => { if (run) { fitCanvases(); draw(); } }).observe(pick('.uv-stage'));
// one watcher for every prop: a run arrives as the value, the busy flag as its own prop
watch(Object.keys(props), () => { if (props.value !== shown) load(props.value); else showState(); });
load(props.value);
"""

def build_viewer(*, value: dict | None = None, step_elem_id: str | None = None, settle_ms: int = 150, **kwargs) -> gr.HTML:
    """The step viewer panel; its value is `frames_payload(...)` or None (an empty state).

    step_elem_id: elem_id of a hidden gr.Number the panel keeps at the current step. settle_ms: how long the
    scrubber must rest before `viewer.step` fires. kwargs go to gr.HTML (elem_id, visible, ...).
    Busy: `gr.update(busy=True)`, cleared by `gr.update(value=payload, busy=False)`; or a class "waiting" on the
    viewer's block, set and removed by an event's `js=`.
    """
    script = f"const STEP_ELEM_ID = {json.dumps(step_elem_id)}, SETTLE_MS = {int(settle_ms)};\n" + VIEWER_JS
    return gr.HTML(value, html_template=VIEWER_HTML, css_template=VIEWER_CSS, js_on_load=script,
                   apply_default_css=False, busy=False, **kwargs)
