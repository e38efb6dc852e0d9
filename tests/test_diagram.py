"""The U-Net diagram panel (explainer/diagram.py): the spec it draws from a model's introspection, the value that adds
B's switches, the click helpers, and one real-browser check of the drawing and its events."""

import json
import os

import gradio as gr
import pytest

from explainer.diagram import (build_diagram, clickable_names, clicked_feature, diagram_spec, diagram_value, toggle_attention,
                               toggle_skip, toggle_time)
from helpers import THREE_LEVEL_UNET, TINY_UNET, build_unet
from playground import Ablation

CHROMIUM = "/usr/bin/chromium"

# Four levels, RGB, attention at 16 and 4 px only, class-conditional: what a 2- or 3-level MNIST model cannot show.
FOUR_LEVEL_UNET = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32, 32), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8, norm_num_groups=4, num_class_embeds=10,
)
WITHOUT_ATTENTION = dict(TINY_UNET, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, add_attention=False)
WITHOUT_BOTTLENECK = dict(TINY_UNET, mid_block_type=None)
THREE_LEVEL_SITES = ["down_blocks.1.attentions.0", "down_blocks.2.attentions.0", "mid_block.attentions.0",
                     "up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]


def nodes_of(spec, kind):
    return [n for n in spec["nodes"] if n["kind"] == kind]


@pytest.mark.parametrize("config, resolutions, channels", [
    (TINY_UNET, [16, 8], [8, 16]),
    (THREE_LEVEL_UNET, [16, 8, 4], [8, 16, 16]),
    (FOUR_LEVEL_UNET, [32, 16, 8, 4], [16, 32, 32, 32]),
])
def test_the_spec_has_a_node_per_level_and_a_skip_arc_per_resolution(config, resolutions, channels):
    spec = diagram_spec(build_unet(config))
    levels = len(resolutions)
    assert [n["kind"] for n in spec["nodes"]] == (["input", "conv_in"] + ["encoder"] * levels + ["bottleneck"]
                                                 + ["decoder"] * levels + ["conv_out", "output"])
    for kind in ("encoder", "decoder"):
        assert [(n["resolution"], n["channels"]) for n in nodes_of(spec, kind)] == list(zip(resolutions, channels))
    assert nodes_of(spec, "encoder")[1]["plain"] == f"encoder {resolutions[1]}×{resolutions[1]} · {channels[1]} ch"
    assert nodes_of(spec, "decoder")[0]["plain"] == f"decoder {resolutions[0]}×{resolutions[0]} · {channels[0]} ch, after the skip joins"
    assert nodes_of(spec, "bottleneck")[0]["resolution"] == resolutions[-1]
    size, colours = config["sample_size"], config["in_channels"]
    assert nodes_of(spec, "input")[0]["shape"] == nodes_of(spec, "output")[0]["shape"] == [colours, size, size]
    arcs = spec["skip_arcs"]
    assert [(a["resolution"], a["from"], a["to"]) for a in arcs] == [(r, f"encoder.{i}", f"decoder.{i}") for i, r in enumerate(resolutions)]
    assert [a["plain"] for a in arcs][-1] == f"skips at {resolutions[-1]}×{resolutions[-1]}"
    assert all(a["switchable"] for a in arcs) and spec["time"]["switchable"]
    assert json.loads(json.dumps(spec)) == spec


def test_each_click_opens_the_map_of_its_own_level():
    spec = diagram_spec(build_unet(THREE_LEVEL_UNET))
    opened = {n["id"]: n["name"] for n in spec["nodes"]}
    assert opened == {"input": None, "conv_in": "conv_in", "encoder.0": "down_blocks.0.resnets.0",
                      "encoder.1": "down_blocks.1.attentions.0", "encoder.2": "down_blocks.2.attentions.0",
                      "bottleneck": "mid_block.resnets.1", "decoder.0": "up_blocks.2.resnets.1",
                      "decoder.1": "up_blocks.1.attentions.1", "decoder.2": "up_blocks.0.attentions.1",
                      "conv_out": None, "output": None}
    assert [a["name"] for a in spec["skip_arcs"]] == ["up_blocks.2.resnets.0.skip", "up_blocks.1.resnets.0.skip",
                                                      "up_blocks.0.resnets.0.skip"]


@pytest.mark.parametrize("config", [TINY_UNET, THREE_LEVEL_UNET, FOUR_LEVEL_UNET, WITHOUT_ATTENTION, WITHOUT_BOTTLENECK])
def test_every_clickable_name_is_a_feature_map_of_that_model(config):
    unet = build_unet(config)
    names = clickable_names(diagram_spec(unet))
    assert names and set(names) <= set(unet.feature_names)


def test_attention_dots_sit_on_their_level_with_plain_names():
    spec = diagram_spec(build_unet(THREE_LEVEL_UNET))
    assert [(a["site"], a["node"], a["plain"]) for a in spec["attention"]] == [
        ("down_blocks.1.attentions.0", "encoder.1", "attention in the encoder at 8×8"),
        ("down_blocks.2.attentions.0", "encoder.2", "attention in the encoder at 4×4"),
        ("mid_block.attentions.0", "bottleneck", "attention in the bottleneck at 4×4"),
        ("up_blocks.0.attentions.0", "decoder.2", "attention in the decoder at 4×4, 1st"),
        ("up_blocks.0.attentions.1", "decoder.2", "attention in the decoder at 4×4, 2nd"),
        ("up_blocks.1.attentions.0", "decoder.1", "attention in the decoder at 8×8, 1st"),
        ("up_blocks.1.attentions.1", "decoder.1", "attention in the decoder at 8×8, 2nd"),
    ]
    assert all(a["name"] == a["site"] and a["switchable"] for a in spec["attention"])
    four = diagram_spec(build_unet(FOUR_LEVEL_UNET))
    assert [a["node"] for a in four["attention"]] == ["encoder.1", "encoder.3", "bottleneck", "decoder.3", "decoder.3",
                                                      "decoder.1", "decoder.1"]
    assert diagram_spec(build_unet(WITHOUT_ATTENTION))["attention"] == []


def test_a_model_without_a_mid_block_has_no_bottleneck_node():
    spec = diagram_spec(build_unet(WITHOUT_BOTTLENECK))
    assert nodes_of(spec, "bottleneck") == [] and all(a["node"] != "bottleneck" for a in spec["attention"])


def test_the_label_input_is_drawn_only_for_a_conditional_model():
    assert diagram_spec(build_unet(THREE_LEVEL_UNET))["label"] is None
    assert diagram_spec(build_unet(FOUR_LEVEL_UNET))["label"]["modules"] == ["class_embedding"]


def test_what_training_took_out_is_not_switchable():
    trained = {"skip_scale": {"8": 0}, "attention_off": ["mid_block.attentions.0"], "time_embedding_off": True}
    spec = diagram_spec(build_unet(THREE_LEVEL_UNET, training_ablation=trained))
    assert {a["resolution"]: a["switchable"] for a in spec["skip_arcs"]} == {16: True, 8: False, 4: True}
    assert [a["site"] for a in spec["attention"] if not a["switchable"]] == ["mid_block.attentions.0"]
    assert spec["time"]["switchable"] is False
    halved = diagram_spec(build_unet(THREE_LEVEL_UNET, training_ablation={"skip_scale": {"8": 0.5}}))
    assert all(a["switchable"] for a in halved["skip_arcs"])  # a weakened skip can still be cut


def test_the_value_carries_b_switches_from_an_ablation_or_its_dict():
    spec = diagram_spec(build_unet(THREE_LEVEL_UNET))
    ablation = Ablation(skip_scale={8: 0, 4: 0.5}, attention_off=["up_blocks.1.attentions.0", "mid_block.attentions.0"],
                        time_embedding_off=True)
    value = diagram_value(spec, ablation, selected="up_blocks.1.resnets.0.skip")
    assert value == {"spec": spec, "skips": {"16": 1.0, "8": 0.0, "4": 0.5},
                     "attention_off": ["mid_block.attentions.0", "up_blocks.1.attentions.0"], "time_off": True,
                     "selected": "up_blocks.1.resnets.0.skip"}
    assert diagram_value(spec, ablation.to_dict(), selected="up_blocks.1.resnets.0.skip") == value
    assert diagram_value(spec)["skips"] == {"16": 1.0, "8": 1.0, "4": 1.0} and diagram_value(None) is None
    with pytest.raises(ValueError, match="skip_scale names resolution"):
        diagram_value(spec, Ablation(skip_scale={28: 0}))
    with pytest.raises(ValueError, match="^selected must be one of"):
        diagram_value(spec, selected="up_blocks.9")


def test_a_skip_click_cuts_a_live_skip_and_restores_a_cut_one():
    gains = {16: 1.0, 8: 0.5, 4: 0.0}
    assert toggle_skip(gains, 8, (16, 8, 4)) == {16: 1.0, 8: 0.0, 4: 0.0}
    assert toggle_skip(gains, 4, (16, 8, 4)) == {16: 1.0, 8: 0.5, 4: 1.0}
    assert toggle_skip({}, 16, (16, 8, 4)) == {16: 0.0}
    assert toggle_skip({"8": 1.0}, "8", (16, 8, 4)) == {8: 0.0}  # a JSON key or a data attribute
    assert gains == {16: 1.0, 8: 0.5, 4: 0.0}
    with pytest.raises(ValueError, match=r"^skip resolution must be one of 16, 8, 4; got 99$"):
        toggle_skip(gains, 99, (16, 8, 4))
    with pytest.raises(ValueError, match=r"^skip resolution must be one of 16, 4; got 8$"):
        toggle_skip(gains, 8, (16, 4))  # training cut 8
    with pytest.raises(ValueError, match="^skip resolution"):
        toggle_skip(gains, True, (16, 8, 4))


def test_an_attention_click_flips_its_site_in_forward_order():
    sites = THREE_LEVEL_SITES
    assert toggle_attention([], sites[3], sites) == [sites[3]]
    assert toggle_attention([sites[5], sites[1]], sites[3], sites) == [sites[1], sites[3], sites[5]]
    assert toggle_attention([sites[1], sites[3]], sites[3], sites) == [sites[1]]
    with pytest.raises(ValueError, match=r"^attention site must be one of .*; got 'up_blocks\.7\.attentions\.0'$"):
        toggle_attention([], "up_blocks.7.attentions.0", sites)
    with pytest.raises(ValueError, match="^attention site must be one of"):
        toggle_attention([], sites[0], sites[1:])  # trained off
    with pytest.raises(ValueError, match="^attention switched off must name switchable sites"):
        toggle_attention(["nowhere"], sites[0], sites)


def test_a_time_click_flips_time_unless_training_removed_it():
    assert toggle_time(False, True) is True and toggle_time(True, True) is False
    with pytest.raises(ValueError, match="^time embedding cannot be switched"):
        toggle_time(False, False)
    with pytest.raises(ValueError, match="^time_off must be true or false"):
        toggle_time("yes", True)


def test_a_block_click_names_one_of_the_model_maps():
    spec = diagram_spec(build_unet(TINY_UNET))
    assert clicked_feature(spec, "up_blocks.0.resnets.0.skip") == "up_blocks.0.resnets.0.skip"
    with pytest.raises(ValueError, match=r"^block name must be one of the model's feature maps .*; got 'conv_out'$"):
        clicked_feature(spec, "conv_out")


def test_the_panel_holds_the_value_and_offers_the_four_click_events():
    spec = diagram_spec(build_unet(TINY_UNET))
    with gr.Blocks():
        diagram = build_diagram(spec, Ablation(skip_scale={8: 0}), elem_id="diagram")
        for event in ("block_click", "skip_click", "attention_click", "time_click"):
            getattr(diagram, event)(lambda: None)
    assert isinstance(diagram, gr.HTML) and diagram.elem_id == "diagram"
    assert diagram.value == diagram_value(spec, Ablation(skip_scale={8: 0}))
    assert build_diagram().value is None


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_drawing_fires_its_events_and_redraws_what_b_switched():
    from playwright.sync_api import expect, sync_playwright

    unet = build_unet(THREE_LEVEL_UNET, training_ablation={"attention_off": ["down_blocks.2.attentions.0"]})
    spec = diagram_spec(unet)

    def shown(kind):
        def handler(evt: gr.EventData):
            return f"{kind} {json.dumps(evt._data, sort_keys=True)}"
        return handler

    def skip_clicked(gains, evt: gr.EventData):  # what the app does: B's gains change, the drawing follows
        gains = toggle_skip(gains, evt._data["resolution"], unet.switchable_skip_resolutions)
        return shown("skip")(evt), diagram_value(spec, Ablation(skip_scale=gains)), gains

    with gr.Blocks() as demo:
        diagram = build_diagram(spec, elem_id="diagram")
        clicked = gr.Textbox(elem_id="clicked")
        gains = gr.State({})
        diagram.skip_click(skip_clicked, gains, [clicked, diagram, gains], show_progress="hidden")
        diagram.block_click(shown("block"), None, clicked)
        diagram.attention_click(shown("attention"), None, clicked)
        diagram.time_click(shown("time"), None, clicked)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.goto(url)
            drawing, said = page.locator("#diagram svg"), page.locator("#clicked textarea")
            skip = drawing.locator('[data-kind="skip"][data-resolution="8"]')
            expect(skip).to_have_attribute("data-off", "false", timeout=30_000)
            skip.click()
            expect(said).to_have_value('skip {"resolution": 8}')
            expect(skip).to_have_attribute("data-off", "true")  # redrawn from the value the handler sent back
            drawing.locator('[data-kind="attention"][data-site="mid_block.attentions.0"]').click()
            expect(said).to_have_value('attention {"site": "mid_block.attentions.0"}')
            drawing.locator('[data-kind="block"][data-name="down_blocks.1.attentions.0"]').click()
            expect(said).to_have_value('block {"name": "down_blocks.1.attentions.0"}')
            drawing.locator('[data-kind="time"]').click()
            expect(said).to_have_value("time {}")
            drawing.locator('[data-kind="block"][data-name="up_blocks.2.resnets.1"]').press("Enter")
            expect(said).to_have_value('block {"name": "up_blocks.2.resnets.1"}')
            skip.press("Enter")  # from the keyboard, it comes back on, and keeps the focus through the redraw
            expect(skip).to_have_attribute("data-off", "false")
            expect(skip).to_be_focused()
            trained = drawing.locator('[data-kind="attention"][data-site="down_blocks.2.attentions.0"]')
            expect(trained).to_have_attribute("data-trained", "true")
            expect(trained).not_to_have_attribute("role", "button")
            page.set_viewport_size({"width": 390, "height": 900})  # a phone: laid out again, not shrunk
            page.wait_for_function("""() => { const svg = document.querySelector('#diagram svg');
                return svg.viewBox.baseVal.width < 400 && Math.abs(svg.getBoundingClientRect().width - svg.viewBox.baseVal.width) < 1; }""",
                                  timeout=10_000)
            smallest = drawing.evaluate("svg => Math.min(...[...svg.querySelectorAll('text')].map(t => parseFloat(getComputedStyle(t).fontSize)))")
            assert smallest >= 11
            browser.close()
    finally:
        demo.close()
