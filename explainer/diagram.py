"""The U-Net diagram panel: a clickable drawing of one model's U, built from its introspection alone.

`diagram_spec(unet)` describes the model's parts (levels, skips, attention sites, the time and label inputs);
`diagram_value(spec, ablation_view, selected)` adds network B's switches; `build_diagram(...)` is the gr.HTML
whose browser code draws that value as an SVG and fires `block_click`, `skip_click`, `attention_click` and
`time_click`. The `toggle_*` and `clicked_feature` helpers check those events' payloads against the model
and compute B's next switches, so the app's handlers stay one line each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import gradio as gr

from explainer.checks import shown
from playground.ablation import Ablation
from playground.unet import feature_group

def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _size(resolution: int) -> str:
    return f"{resolution}×{resolution}"


def _output_map(names: list[str], block: str) -> str:
    """A block's own output at its level's resolution: its last resnet or attention map, before any resampler
    (the `.update`, `.skip` and `.backbone` taps are parts of a layer, not what the level hands on)."""
    own = re.compile(rf"{re.escape(block)}\.(resnets|attentions)\.\d+")
    return [name for name in names if own.fullmatch(name)][-1]


def diagram_spec(unet) -> dict:
    """Everything the drawing needs, as JSON-ready data, from `unet`'s introspection (no forward pass runs:
    `feature_shapes` traces on the meta device)."""
    shapes = unet.feature_shapes()
    names = list(shapes)
    resolutions = list(unet.level_resolutions)
    levels = len(resolutions)
    trained = unet.training_ablation
    image = list(shapes["conv_in"][1:])

    def node(node_id, kind, name, plain, modules, resolution=None, level=None, shape=None, channels=None):
        return {"id": node_id, "kind": kind, "name": name, "plain": plain, "modules": modules, "level": level,
                "resolution": resolution, "channels": shapes[name][0] if name else channels, "shape": shape}

    input_shape, output_shape = [unet.config.in_channels, *image], [unet.config.out_channels, *image]
    shown_in, shown_out = "×".join(map(str, input_shape)), "×".join(map(str, output_shape))
    nodes = [
        node("input", "input", None, f"noisy input x_t · {shown_in}", [], shape=input_shape),
        node("conv_in", "conv_in", "conv_in", f"conv_in · {shapes['conv_in'][0]} ch at {_size(resolutions[0])}",
             ["conv_in"], resolutions[0]),
    ]
    for level, resolution in enumerate(resolutions):
        name = _output_map(names, f"down_blocks.{level}")
        nodes.append(node(f"encoder.{level}", "encoder", name, f"encoder {_size(resolution)} · {shapes[name][0]} ch",
                          [f"down_blocks.{level}"], resolution, level))
    if unet.mid_block is not None:
        name = _output_map(names, "mid_block")
        nodes.append(node("bottleneck", "bottleneck", name, f"bottleneck {_size(resolutions[-1])} · {shapes[name][0]} ch",
                          ["mid_block"], resolutions[-1]))
    # up_blocks run deepest first; listing them by level pairs each with its encoder level and skips
    for level, resolution in enumerate(resolutions):
        block = f"up_blocks.{levels - 1 - level}"
        name = _output_map(names, block)
        nodes.append(node(f"decoder.{level}", "decoder", name,
                          f"decoder {_size(resolution)} · {shapes[name][0]} ch, after the skip joins", [block], resolution, level))
    nodes.append(node("conv_out", "conv_out", None, f"conv_out · back to {shown_out}", ["conv_norm_out", "conv_act", "conv_out"],
                      resolutions[0], channels=unet.config.out_channels))
    nodes.append(node("output", "output", None, f"predicted noise ε̂ · {shown_out}", [], shape=output_shape))

    skip_arcs = []
    for level, resolution in enumerate(resolutions):
        joins = [n for n in names if n.startswith(f"up_blocks.{levels - 1 - level}.") and feature_group(n) == "skip"]
        skip_arcs.append({"resolution": resolution, "level": level, "from": f"encoder.{level}", "to": f"decoder.{level}",
                          "name": joins[0] if joins else None, "modules": joins, "plain": f"skips at {_size(resolution)}",
                          "switchable": resolution in unet.switchable_skip_resolutions})

    attention = []
    for site in unet.attention_sites:
        part = feature_group(site)
        level = None
        if part != "bottleneck":
            index = int(site.split(".")[1])
            level = index if part == "encoder" else levels - 1 - index
        node_id = part if level is None else f"{part}.{level}"
        attention.append({"site": site, "name": site, "node": node_id, "part": part, "level": level,
                          "switchable": site in unet.switchable_attention_sites,
                          "resolution": resolutions[-1] if level is None else resolutions[level]})
    for entry in attention:
        same_node = [other["site"] for other in attention if other["node"] == entry["node"]]
        ordinal = f", {_ordinal(same_node.index(entry['site']) + 1)}" if len(same_node) > 1 else ""
        entry["plain"] = f"attention in the {entry['part']} at {_size(entry['resolution'])}{ordinal}"

    conditional = unet.class_embedding is not None
    return {
        "resolutions": resolutions,
        "nodes": nodes,
        "skip_arcs": skip_arcs,
        "attention": attention,
        "time": {"plain": "time step t, embedded and fed to every block", "modules": ["time_proj", "time_embedding"],
                 "switchable": not trained.time_embedding_off},
        "label": {"plain": "class label y, embedded and added to t's embedding", "modules": ["class_embedding"]}
        if conditional else None,
    }


def clickable_names(spec: dict) -> list[str]:
    """Every feature map a click on the drawing can open, in drawing order."""
    names = [n["name"] for n in spec["nodes"] if n["name"]]
    names += [arc["name"] for arc in spec["skip_arcs"] if arc["name"]]
    return names + [entry["name"] for entry in spec["attention"]]


def diagram_value(spec: dict | None, ablation_view: Ablation | Mapping | None = None, selected: str | None = None) -> dict | None:
    """The panel's value: `spec` plus B's switches (an Ablation, or its `to_dict()` form) and the open map.

    {"spec": spec, "skips": {"28": 1.0, "14": 0.0, ...}, "attention_off": [sites], "time_off": bool, "selected": name | None}
    """
    if spec is None:
        return None
    ablation = ablation_view if isinstance(ablation_view, Ablation) else Ablation.from_dict(ablation_view)
    ablation.check_against(spec["resolutions"], [entry["site"] for entry in spec["attention"]])
    if selected is not None:
        clicked_feature(spec, selected, argument="selected")
    return {
        "spec": spec,
        "skips": {str(r): ablation.skip_gain(r) for r in spec["resolutions"]},
        "attention_off": [entry["site"] for entry in spec["attention"] if entry["site"] in ablation.attention_off],
        "time_off": ablation.time_embedding_off,
        "selected": selected,
    }


def clicked_feature(spec: dict, name, argument: str = "block name") -> str:
    """`name` if a click on this model's drawing can open it (a `block_click` payload's `name`); else ValueError."""
    choices = clickable_names(spec)
    if not isinstance(name, str) or name not in choices:
        raise ValueError(f"{argument} must be one of the model's feature maps {choices}; got {shown(name)}")
    return name


def toggle_skip(gains: Mapping, resolution, switchable: Iterable[int]) -> dict[int, float]:
    """B's skip gains after a click on the skip arc at `resolution`: a live skip (any gain ≠ 0) is cut to 0, a cut
    one comes back at 1. `switchable`: the resolutions B may change (`unet.switchable_skip_resolutions`)."""
    switchable = [int(r) for r in switchable]
    is_whole = isinstance(resolution, int) and not isinstance(resolution, bool)
    if isinstance(resolution, str) and resolution.isdigit():  # data attributes and JSON keys are strings
        resolution, is_whole = int(resolution), True
    if not is_whole or resolution not in switchable:
        allowed = ", ".join(map(str, switchable)) or "none (training cut them all)"
        raise ValueError(f"skip resolution must be one of {allowed}; got {shown(resolution)}")
    gains = {int(r): float(g) for r, g in gains.items()}
    return {**gains, resolution: 1.0 if gains.get(resolution, 1.0) == 0.0 else 0.0}


def toggle_attention(off: Iterable[str], site, switchable: Iterable[str]) -> list[str]:
    """B's switched-off attention sites after a click on `site`'s dot, in forward order.
    `switchable`: the sites B may change (`unet.switchable_attention_sites`)."""
    switchable = list(switchable)
    if not isinstance(site, str) or site not in switchable:
        raise ValueError(f"attention site must be one of {switchable or 'none (this model has no switchable attention)'}; "
                         f"got {shown(site)}")
    off = set(off)
    unknown = sorted(off - set(switchable))
    if unknown:
        raise ValueError(f"attention switched off must name switchable sites {switchable}; got {unknown}")
    return [s for s in switchable if (s in off) != (s == site)]


def toggle_time(time_off: bool, switchable: bool) -> bool:
    """Whether B's time embedding is off after a click on the time input (`spec["time"]["switchable"]`)."""
    if not switchable:
        raise ValueError("time embedding cannot be switched: this model was trained without it")
    if not isinstance(time_off, bool):
        raise ValueError(f"time_off must be true or false; got {shown(time_off)}")
    return not time_off


def build_diagram(spec: dict | None = None, ablation_view=None, selected: str | None = None, **kwargs) -> gr.HTML:
    """The panel. Extra keyword arguments go to gr.HTML (elem_id, visible, ...)."""
    return gr.HTML(value=diagram_value(spec, ablation_view, selected), html_template=HTML_TEMPLATE,
                   css_template=CSS, js_on_load=JS, apply_default_css=False, **kwargs)


HTML_TEMPLATE = """<div class="unet-diagram"><div class="unet-svg"></div><div class="unet-caption" aria-live="polite"></div>
<div class="unet-legend"><span class="lg-skip">skip</span><span class="lg-attn">attention</span>
<span class="lg-off">switched off in B</span><span class="lg-trained">trained without</span></div></div>"""

CSS = """
.unet-diagram { background: #fff; border: 1px solid #e2e8f0; border-radius: 10px; padding: 6px 4px 8px;
  font-family: ui-sans-serif, system-ui, -apple-system, "Segoe UI", sans-serif; color: #1e293b; }
.unet-svg svg { display: block; margin: 0 auto; max-width: 100%; height: auto; }
text { font-size: 11px; fill: #475569; pointer-events: none; }
.t-main { font-size: 12px; font-weight: 600; fill: #1e293b; }
.t-conv, .t-gain, .t-off { font-size: 11px; font-weight: 600; fill: #1e293b; }
.t-gain { fill: #4f46e5; } .t-off { fill: #dc2626; } .t-trained { font-style: italic; fill: #94a3b8; }
.flow { stroke: #64748b; stroke-width: 1.4; fill: none; }
.bus { stroke: #94a3b8; stroke-width: 1.3; fill: none; }
.bus.faded { opacity: .35; stroke-dasharray: 4 3; }
.box { fill: #f8fafc; stroke: #94a3b8; stroke-width: 1.2; }
.box.io { fill: #fff; stroke-dasharray: 3 2; } .box.mid { fill: #eef2ff; } .box.off { stroke: #dc2626; }
.box.trained { fill: #f8fafc; stroke: #cbd5e1; stroke-dasharray: 3 3; }
.pick { cursor: pointer; outline: none; }
.pick:hover .box, .pick:focus-visible .box { fill: #eef2ff; stroke: #6366f1; stroke-width: 2; }
.pick:focus-visible .box, .pick:focus-visible .dot, .pick:focus-visible .wire { stroke: #4338ca; stroke-width: 2.5; }
.selected .box { fill: #e0e7ff; stroke: #4f46e5; stroke-width: 2.5; }
.wire { fill: none; stroke: #6366f1; }
.wire.off { stroke: #dc2626; stroke-dasharray: 5 4; }
.wire.trained { stroke: #aab4c3; stroke-dasharray: 2 4; stroke-width: 1.5; }
.pick:hover .wire:not(.off) { stroke: #4338ca; }
.halo { fill: none; stroke: #c7d2fe; stroke-width: 9; stroke-linecap: round; }
.hitline { fill: none; stroke: transparent; stroke-width: 16; stroke-linecap: round; }
.hitdot { fill: transparent; } .pick:focus-visible .hitline { stroke: rgba(99, 102, 241, .16); }
.pick:hover .hitdot, .pick:focus-visible .hitdot { fill: rgba(99, 102, 241, .2); }
.dot { fill: #6366f1; stroke: #fff; stroke-width: 1.5; }
.dot.off { fill: #fff; stroke: #dc2626; stroke-width: 1.8; }
.dot.trained { fill: #fff; stroke: #94a3b8; stroke-width: 1.5; stroke-dasharray: 2 2; }
.pick:hover .dot:not(.off) { fill: #4338ca; }
.selected .dot { stroke: #312e81; stroke-width: 2.5; }
.cross { stroke: #dc2626; stroke-width: 1.8; stroke-linecap: round; } .cross.trained { stroke: #94a3b8; }
.unet-caption { font-size: 13px; line-height: 1.35; min-height: 1.35em; text-align: center; text-wrap: balance; color: #334155;
  margin: 2px 8px 4px; }
.unet-legend { display: flex; flex-wrap: wrap; justify-content: center; gap: 2px 14px; font-size: 11.5px; color: #64748b; }
.unet-legend span::before { content: ""; display: inline-block; vertical-align: middle; margin-right: 5px; }
.lg-skip::before, .lg-off::before, .lg-trained::before { width: 18px; border-top: 2.5px solid #6366f1; }
.lg-off::before { border-top: 2px dashed #dc2626; } .lg-trained::before { border-top: 2px dotted #aab4c3; }
.lg-attn::before { width: 9px; height: 9px; border-radius: 50%; background: #6366f1; }
"""

# Drawn in the browser from the value, so a switch sends data, not markup. Coordinates are CSS pixels: the SVG is laid
# out for the width it gets (290-560 px), which keeps every text at its real size on a phone too.
JS = r"""
const NS = "http://www.w3.org/2000/svg";
const root = element.querySelector(".unet-diagram");
const holder = root.querySelector(".unet-svg"), caption = root.querySelector(".unet-caption");
const EVENTS = {block: "block_click", skip: "skip_click", attention: "attention_click", time: "time_click"};
const uid = "unet" + Math.random().toString(36).slice(2, 8);  // marker ids must not clash with another diagram
const HINT = "Click a block to open its maps. Click a skip, an attention dot or t to switch it in B.";
let restingCaption = HINT, drawnWidth = 0;

function el(tag, attrs, ...kids) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v);
  e.append(...kids.filter(Boolean));
  return e;
}
function label(x, y, s, cls) { const t = el("text", {x, y, class: cls, "text-anchor": "middle"}); t.textContent = s; return t; }
function tip(s) { const t = el("title"); t.textContent = s; return t; }
function say(s) { caption.textContent = s || restingCaption; }
function cross(x, y, r, cls) {
  return el("g", {class: "cross " + (cls || "")}, el("path", {d: `M${x - r},${y - r}L${x + r},${y + r}M${x + r},${y - r}L${x - r},${y + r}`}));
}

// One drawn part. Clickable ones are buttons for the keyboard and screen readers; parts training removed are not.
function part(kind, key, text, clickable, payload, attrs, ...kids) {
  const g = el("g", {"data-kind": kind, "data-key": key, "aria-label": text, ...attrs}, ...kids);
  g.addEventListener("pointerenter", () => say(text));
  g.addEventListener("pointerleave", () => say());
  if (!clickable) { g.setAttribute("role", "img"); g.setAttribute("data-trained", "true"); return g; }
  g.classList.add("pick");
  g.setAttribute("tabindex", "0");
  g.setAttribute("role", "button");
  const fire = () => trigger(EVENTS[kind], payload);
  g.addEventListener("click", fire);
  g.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fire(); } });
  g.addEventListener("focus", () => say(text));
  g.addEventListener("blur", () => say());
  return g;
}

function render() {
  const v = props.value;
  if (!v || !v.spec) { holder.replaceChildren(); restingCaption = "No model to draw yet."; say(); return; }
  const spec = v.spec, L = spec.resolutions.length;
  const focused = holder.contains(document.activeElement) ? document.activeElement.getAttribute("data-key") : null;
  drawnWidth = root.clientWidth;
  const W = Math.round(Math.min(560, Math.max(290, (root.clientWidth || 528) - 8)));
  const wide = W >= 460, h = 34, s = L <= 3 ? 52 : L === 4 ? 46 : 40, ioY = 24, busX = 10;
  const x0 = wide ? 108 : 86, cx = W / 2, rowY = i => 82 + i * s;
  const dx = L > 1 ? Math.max(0, (cx - (wide ? 92 : 64) - x0) / (L - 1)) : 0;
  const yB = rowY(L - 1) + s, busY = yB + h / 2 + 22, H = busY + 16;
  const sized = spec.nodes.filter(n => ["encoder", "bottleneck", "decoder"].includes(n.kind)).map(n => n.channels);
  const cMin = Math.min(...sized), cMax = Math.max(...sized), wMin = 52, wMax = wide ? 84 : 68;
  const width = c => cMax > cMin ? wMin + (wMax - wMin) * (c - cMin) / (cMax - cMin) : (wMin + wMax) / 2;
  const pos = {};
  for (const n of spec.nodes) {
    const x = {encoder: x0 + n.level * dx, decoder: W - x0 - n.level * dx, bottleneck: cx, conv_in: x0, conv_out: W - x0,
               input: (x0 - 30) / 2, output: W - (x0 - 30) / 2}[n.kind];
    const y = {encoder: rowY(n.level), decoder: rowY(n.level), bottleneck: yB}[n.kind] ?? ioY;
    const w = {conv_in: 60, conv_out: 60, input: x0 - 50, output: x0 - 50, bottleneck: Math.max(80, width(n.channels))}[n.kind]
      ?? width(n.channels);
    const tall = n.shape ? 24 : h;  // x_t and ε̂ are pills, their shape written underneath
    pos[n.id] = {x, y, w, top: y - tall / 2, bottom: y + tall / 2, left: x - w / 2, right: x + w / 2, tall,
                 outer: n.kind === "decoder" || n.kind === "conv_out" ? x + w / 2 - 12 : x - w / 2 + 12};
  }
  const at = id => pos[id], enc = i => pos["encoder." + i], dec = i => pos["decoder." + i], mid = pos.bottleneck;
  const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, width: W, role: "group", "aria-label": "U-Net diagram"});
  const defs = el("defs");
  for (const [name, colour, size] of [["flow", "#64748b", 6], ["skip", "#6366f1", 7], ["off", "#dc2626", 7], ["trained", "#aab4c3", 7], ["bus", "#94a3b8", 5]])
    defs.append(el("marker", {id: `${uid}-${name}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: size, markerHeight: size,
                              markerUnits: "userSpaceOnUse", orient: "auto"}, el("path", {d: "M0,1L10,5L0,9z", fill: colour})));
  svg.append(defs);
  const arrow = (d, cls, marker) => el("path", {d, class: cls, "marker-end": `url(#${uid}-${marker})`});

  // time (and label) bus: up both sides of the U, one tick into every block that takes the embedding
  const t = spec.time, timeOff = t.switchable && v.time_off;
  const bus = el("g");
  const busCls = "bus" + (!t.switchable || (timeOff && !spec.label) ? " faded" : "");
  bus.append(el("path", {d: `M${busX},${rowY(0)}V${busY}H${W - busX}V${rowY(0)}`, class: busCls}));
  for (let i = 0; i < L; i++) {
    bus.append(arrow(`M${busX},${enc(i).y}H${enc(i).left}`, busCls, "bus"), arrow(`M${W - busX},${dec(i).y}H${dec(i).right}`, busCls, "bus"));
  }
  if (mid) bus.append(arrow(`M${cx},${busY}V${mid.bottom}`, busCls, "bus"));
  svg.append(bus);

  // the data path: down the encoder, through the bottleneck, up the decoder
  const flow = el("g");
  flow.append(arrow(`M${at("input").right},${ioY}H${at("conv_in").left}`, "flow", "flow"),
              arrow(`M${enc(0).outer},${at("conv_in").bottom}V${enc(0).top}`, "flow", "flow"),
              arrow(`M${dec(0).outer},${dec(0).top}V${at("conv_out").bottom}`, "flow", "flow"),
              arrow(`M${at("conv_out").right},${ioY}H${at("output").left}`, "flow", "flow"));
  for (let i = 0; i + 1 < L; i++) {
    flow.append(arrow(`M${enc(i).x},${enc(i).bottom}L${enc(i + 1).outer},${enc(i + 1).top}`, "flow", "flow"),
                arrow(`M${dec(i + 1).outer},${dec(i + 1).top}L${dec(i).x},${dec(i).bottom}`, "flow", "flow"));
  }
  const deep = enc(L - 1), rise = dec(L - 1);
  flow.append(mid ? arrow(`M${deep.x},${deep.bottom}V${yB}H${mid.left}`, "flow", "flow") : null,
              arrow(mid ? `M${mid.right},${yB}H${rise.x}V${rise.bottom}` : `M${deep.x},${deep.bottom}V${yB}H${rise.x}V${rise.bottom}`, "flow", "flow"));
  svg.append(flow);

  // skips across the U, each at its own resolution
  for (const arc of spec.skip_arcs) {
    const a = enc(arc.level), b = dec(arc.level), gain = v.skips[String(arc.resolution)] ?? 1, cut = arc.switchable && gain === 0;
    const d = `M${a.right},${a.y}Q${cx},${a.y - 18} ${b.left},${b.y}`, peak = a.y - 9;
    const shown = `×${+gain.toFixed(2)}`, chosen = v.selected != null && v.selected === arc.name;
    const state = !arc.switchable ? "trained without" : cut ? "cut in B" : gain !== 1 ? `scaled ${shown} in B` : "on in B";
    const cls = !arc.switchable ? "wire trained" : cut ? "wire off" : "wire";
    const look = arc.switchable && !cut ? {"stroke-width": Math.min(6, Math.max(1.2, 2.5 * gain)), opacity: 0.35 + 0.65 * Math.min(gain, 1)} : {};
    const g = part("skip", "skip:" + arc.resolution, `${arc.plain}: ${state}`, arc.switchable, {resolution: arc.resolution},
      {"data-resolution": arc.resolution, "data-name": arc.name, "data-off": cut || !arc.switchable ? "true" : "false",
       class: chosen ? "selected" : null},
      tip(arc.modules.join(", ")), chosen ? el("path", {d, class: "halo"}) : null,
      el("path", {d, class: "hitline"}),
      el("path", {d, class: cls, ...look, "marker-end": `url(#${uid}-${!arc.switchable ? "trained" : cut ? "off" : "skip"})`}));
    if (!arc.switchable && b.left - a.right > 110) g.append(label(cx, peak - 5, "trained without", "t-trained"));
    else if (cut) g.append(cross(cx, peak, 4), label(cx, peak - 8, "cut", "t-off"));
    else if (gain !== 1) g.append(label(cx, peak - 5, shown, "t-gain"));
    svg.append(g);
  }

  // blocks; the ones with a feature map open it on click
  for (const n of spec.nodes) {
    const p = pos[n.id], io = !n.name, main = {input: "x_t", output: "ε̂", conv_in: "conv_in", conv_out: "conv_out",
                                                 bottleneck: "bottleneck"}[n.kind] ?? `${n.resolution}×${n.resolution}`;
    const sub = n.shape ? n.shape.join("×") : n.kind === "bottleneck" ? `${n.resolution}×${n.resolution} · ${n.channels} ch`
      : n.channels ? `${n.channels} ch` : "";
    const conv = n.kind === "conv_in" || n.kind === "conv_out";
    const kids = [tip([...n.modules, n.name && n.name !== n.modules[0] ? "opens " + n.name : ""].filter(Boolean).join(" · ") || n.plain),
                  el("rect", {x: p.left, y: p.top, width: p.w, height: p.tall, rx: n.shape ? 12 : 7,
                              class: "box" + (io ? " io" : "") + (n.kind === "bottleneck" ? " mid" : "")}),
                  n.shape ? label(p.x, p.y + 4, main, "t-main") : label(p.x, p.y - 2, main, conv ? "t-conv" : "t-main"),
                  label(p.x, n.shape ? p.bottom + 13 : p.y + 12, sub, "")];
    svg.append(io ? el("g", {"data-kind": n.kind, role: "img", "aria-label": n.plain}, ...kids)
      : part("block", "block:" + n.name, n.plain, true, {name: n.name},
             {"data-name": n.name, class: v.selected === n.name ? "selected" : null}, ...kids));
  }

  // attention dots on the top edge of their block, from its inner side
  const perNode = {};
  for (const a of spec.attention) (perNode[a.node] = perNode[a.node] || []).push(a);
  for (const [id, sites] of Object.entries(perNode)) {
    const p = pos[id], step = Math.min(14, (p.w - 24) / sites.length);
    sites.forEach((a, k) => {
      const x = id === "bottleneck" ? p.x + (k - (sites.length - 1) / 2) * step
        : id.startsWith("decoder") ? p.left + 10 + k * step : p.right - 10 - k * step;
      const off = a.switchable && v.attention_off.includes(a.site);
      const state = !a.switchable ? "trained without" : off ? "switched off in B" : "on in B";
      svg.append(part("attention", "attention:" + a.site, `${a.plain}: ${state}`, a.switchable, {site: a.site},
        {"data-site": a.site, "data-name": a.name, "data-off": off || !a.switchable ? "true" : "false",
         class: v.selected === a.name ? "selected" : null},
        tip(a.site), el("circle", {cx: x, cy: p.top, r: 10, class: "hitdot"}),
        el("circle", {cx: x, cy: p.top, r: 5.5, class: "dot" + (!a.switchable ? " trained" : off ? " off" : "")}),
        off || !a.switchable ? cross(x, p.top, 2.6, a.switchable ? "" : "trained") : null));
    });
  }

  // the inputs on the bus: t (switchable) and, for a conditional model, the label
  const tx = spec.label ? cx - 58 : cx, pill = (x, w, cls) => el("rect", {x: x - w / 2, y: busY - 11, width: w, height: 22, rx: 11, class: cls});
  const tState = !t.switchable ? "trained without" : timeOff ? "switched off in B" : "on in B";
  svg.append(part("time", "time", `${t.plain}: ${tState}`, t.switchable, {}, {"data-off": timeOff || !t.switchable ? "true" : "false"},
    tip(t.modules.join(", ")), pill(tx, 72, "box io" + (!t.switchable ? " trained" : timeOff ? " off" : "")),
    label(tx, busY + 4, "time t", "t-main"), timeOff || !t.switchable ? cross(tx + 36, busY - 11, 4, t.switchable ? "" : "trained") : null));
  if (spec.label) {
    svg.append(el("g", {"data-kind": "label", role: "img", "aria-label": spec.label.plain}, tip(spec.label.modules.join(", ")),
      pill(cx + 58, 72, "box io"), label(cx + 58, busY + 4, "label y", "t-main")));
  }

  holder.replaceChildren(svg);
  const chosen = [...spec.nodes, ...spec.attention, ...spec.skip_arcs].find(x => x.name && x.name === v.selected);
  restingCaption = chosen ? "Open: " + chosen.plain : HINT;
  say();
  if (focused) holder.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
}

render();
watch("value", render);
new ResizeObserver(() => { if (Math.abs(root.clientWidth - drawnWidth) > 4) render(); }).observe(root);
"""
