"""A public service: broken weights are refused by name, hostile inputs get a plain sentence, numbers stay
finite and reproducible, and a session's state does not outlive it.

Hostile inputs are generated per handler and per argument (wrong types, out of range, NaN/inf, huge,
empty, unknown names, unicode, None) and called the way Gradio calls them: through `checks.user_errors`.
Every one must end in `UserError`; an `InternalError` (an unforeseen exception) is a bug in app.py.
"""

import functools
import json
import os
import shutil
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from explainer import checks  # noqa: E402
from explainer import features  # noqa: E402
from explainer import numbers  # noqa: E402
from explainer import options  # noqa: E402
from explainer import share  # noqa: E402
from explainer import page  # noqa: E402
from explainer import runs  # noqa: E402
from explainer import sessions  # noqa: E402
from explainer import switches  # noqa: E402
from explainer import when  # noqa: E402
from playground import PlaygroundUNet, SampleSettings, load_pipeline  # noqa: E402
from playground.sampling import MAX_STEPS, sample  # noqa: E402
from playground.registry import ModelRegistry  # noqa: E402
from tiny_weights import TINY_UNET, make_tiny_weights, write_pipeline  # noqa: E402

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
SITE = "down_blocks.1.attentions.0"
FLAGSHIP = os.path.join(os.path.dirname(__file__), "..", "weights", "mnist")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def registry(tiny_weights):
    return ModelRegistry(tiny_weights)


class NoProgress:
    def __call__(self, *args, **kwargs):
        pass


# ---------------------------------------------------------------------------------------------
# Broken weights: each case breaks one file of a copy of the tiny model in one way.
# ---------------------------------------------------------------------------------------------


def _edit_config(**changes):
    def edit(unet_dir):
        config = json.loads((unet_dir / "config.json").read_text())
        (unet_dir / "config.json").write_text(json.dumps(config | changes))
    return edit


def _edit_tensors(change):
    def edit(unet_dir):
        tensors = load_file(unet_dir / WEIGHTS_FILE)
        change(tensors)
        save_file(tensors, unet_dir / WEIGHTS_FILE)
    return edit


def _only_a_pickle(name):
    def edit(unet_dir):
        tensors = load_file(unet_dir / WEIGHTS_FILE)
        (unet_dir / WEIGHTS_FILE).unlink()
        torch.save(tensors, unet_dir / name)
    return edit


def _truncate(keep):
    def edit(unet_dir):
        data = (unet_dir / WEIGHTS_FILE).read_bytes()
        (unet_dir / WEIGHTS_FILE).write_bytes(data[:keep(len(data))])
    return edit


# case -> (how to break unet/, the file the error must name, words of the problem it must say)
BROKEN = {
    "truncated-header": (_truncate(lambda n: 1000), WEIGHTS_FILE, "truncated or corrupt"),
    "truncated-tail": (_truncate(lambda n: n - 100), WEIGHTS_FILE, "truncated or corrupt"),
    "garbage-weights": (lambda d: (d / WEIGHTS_FILE).write_bytes(b"\x89garbage" * 64), WEIGHTS_FILE, "truncated or corrupt"),
    "empty-weights": (lambda d: (d / WEIGHTS_FILE).write_bytes(b""), WEIGHTS_FILE, "truncated or corrupt"),
    "no-weights": (lambda d: (d / WEIGHTS_FILE).unlink(), WEIGHTS_FILE, "missing"),
    "no-config": (lambda d: (d / "config.json").unlink(), "config.json", "missing"),
    "invalid-json": (lambda d: (d / "config.json").write_text('{"sample_size": 28,'), "config.json", "not valid JSON"),
    "json-not-an-object": (lambda d: (d / "config.json").write_text("[28, 1, 1]"), "config.json", "JSON object"),
    "config-wrong-type": (_edit_config(layers_per_block="two"), "config.json", "does not describe a model"),
    "config-unsupported": (_edit_config(act_fn="gelu"), "config.json", "act_fn"),
    "config-wider-than-weights": (_edit_config(block_out_channels=[16, 32]), WEIGHTS_FILE, "has shape"),
    "config-deeper-than-weights": (_edit_config(layers_per_block=2), WEIGHTS_FILE, "tensors missing"),
    "a-tensor-missing": (_edit_tensors(lambda t: t.pop("conv_out.weight")), WEIGHTS_FILE, "conv_out.weight"),
    "an-extra-tensor": (_edit_tensors(lambda t: t.update(stray=torch.zeros(3))), WEIGHTS_FILE, "unexpected ['stray']"),
    "nan-weights": (_edit_tensors(lambda t: t["conv_in.weight"].fill_(float("nan"))), WEIGHTS_FILE, "NaN or infinite"),
    "integer-weights": (_edit_tensors(lambda t: t.update({"conv_in.bias": t["conv_in.bias"].int()})), WEIGHTS_FILE, "floating-point"),
    "only-a-bin-pickle": (_only_a_pickle("diffusion_pytorch_model.bin"), "diffusion_pytorch_model.bin", "never loaded"),
    "only-a-pt-pickle": (_only_a_pickle("model.pt"), "model.pt", "never loaded"),
}


def _broken_copy(tiny_weights, root, case):
    break_it = BROKEN[case][0]
    shutil.copytree(tiny_weights / "tiny", root / case)
    break_it(root / case / "unet")
    return root / case


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_model_folder_is_refused_naming_the_file_and_the_problem(tiny_weights, tmp_path, case):
    folder = _broken_copy(tiny_weights, tmp_path, case)
    _, file_name, problem = BROKEN[case]
    with pytest.raises(ValueError) as refused:
        PlaygroundUNet.from_pretrained(folder, subfolder="unet")
    assert file_name in str(refused.value) and problem in str(refused.value)
    with pytest.raises(ValueError, match="unet"):
        load_pipeline(folder)


@pytest.mark.parametrize("pickle_name", ["diffusion_pytorch_model.bin", "diffusion_pytorch_model.pt"])
def test_a_pickle_is_never_opened(tiny_weights, tmp_path, pickle_name):
    class Trap:  # unpickling this creates `opened`: proof that the pickle ran
        def __reduce__(self):
            return (open, (str(tmp_path / "opened"), "w"))

    folder = tmp_path / "model"
    shutil.copytree(tiny_weights / "tiny", folder)
    (folder / "unet" / WEIGHTS_FILE).unlink()
    torch.save({"conv_in.weight": Trap()}, folder / "unet" / pickle_name)
    with pytest.raises(ValueError, match="pickle"):
        load_pipeline(folder)
    assert not (tmp_path / "opened").exists()


@pytest.mark.parametrize("content, problem", [("[]", "JSON object"), ('{"beta_end": 2.0}', "cannot be built"),
                                               ('{"num_train_timesteps": "many"}', "cannot be built"), ("{", "invalid JSON")])
def test_a_broken_scheduler_config_is_refused_naming_the_file(tiny_weights, tmp_path, content, problem):
    folder = tmp_path / "model"
    shutil.copytree(tiny_weights / "tiny", folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(content)
    with pytest.raises(ValueError, match=f"scheduler_config.json.*{problem}"):
        load_pipeline(folder)


def test_the_app_serves_the_sound_models_and_says_which_failed_and_why(tiny_weights, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(tiny_weights, root)
    for case in BROKEN:
        _broken_copy(tiny_weights, root, case)
    shutil.rmtree(root / "classifier")
    shutil.copytree(tiny_weights / "classifier", root / "classifier")
    (root / "classifier" / WEIGHTS_FILE).write_bytes(b"not a classifier")
    registry = ModelRegistry(root)

    errors = registry.load_all()

    assert registry.available == ["tiny", "tiny-noskip"]
    assert set(errors) == set(BROKEN) | {"classifier"}
    status = switches.describe_models(registry)
    for case, (_, file_name, problem) in BROKEN.items():
        assert f"`{case}` could not be loaded" in status and file_name in errors[case] and problem in errors[case]
    assert str(tmp_path) not in status  # the server's own directories are not shown to visitors
    state, *_ = runs.generate(registry, "tiny", checks.SAME_AS_A, checks.DIGIT_CHOICES[1], 2, 0, "ddim", 3, 2,
                             1, 1, 1, 1, 1, [], False, None, progress=NoProgress())
    assert torch.isfinite(state["a"].final).all()
    with pytest.raises(gr.Error, match="failed to load"):
        checks.user_errors(runs.generate)(registry, "nan-weights", checks.SAME_AS_A, checks.DIGIT_CHOICES[1], 2, 0, "ddim", 3, 2,
                                      1, 1, 1, 1, 1, [], False, None, progress=NoProgress())


def test_build_demo_starts_with_broken_models_beside_sound_ones(tiny_weights, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(tiny_weights, root)
    _broken_copy(tiny_weights, root, "truncated-tail")
    demo = page.build_demo(root)
    status = next(block.value for block in demo.blocks.values() if getattr(block, "elem_id", None) == "model-status")
    assert "`truncated-tail` could not be loaded" in status and "truncated or corrupt" in status


# ---------------------------------------------------------------------------------------------
# Hostile inputs, generated: every handler × every argument × every kind of bad value.
# ---------------------------------------------------------------------------------------------

NOT_A_NUMBER = [None, "", "3", "three", "٣", "３", [], [3], {"value": 3}, (1,), True, b"3", float("nan"), float("inf"),
                float("-inf"), 1j]
NOT_A_NAME = [None, "", "nope", "../../etc/passwd", "/etc/passwd", "tiny/../tiny", "tiny\x00", "ｔｉｎｙ", "\u202etiny",
              "t" * 100_000, 3, 3.5, float("nan"), [], ["tiny"], {"name": "tiny"}, b"tiny", True]
NOT_A_SITE_LIST = [SITE, 5, [5], [None], ["no.such.site"], [SITE + " "], ["\u202e"], [[SITE]], {SITE: True},
                   ["x" * 100_000], [float("nan")], True]
NOT_A_SWITCH = ["false", "true", "", None, 0, 1, 1.0, [], [False], float("nan")]


def _out_of(low, high, whole):
    """Numbers of the right type that are still wrong: outside [low, high], or not whole where whole is due."""
    values = [low - 1, high + 1, -10**400, 10**400, -1e308, 1e308]
    return values + ([low + 0.5, 2.000001] if whole else [])


# Each handler: a valid call, argument by argument; bad[name] lists the values to try for that argument and
# `says` the words the sentence must contain (the argument's name as the visitor knows it).
def _generate_arguments(**changes):
    args = dict(model_a="tiny", model_b=checks.SAME_AS_A, digit=checks.DIGIT_CHOICES[1], guidance=2.0, seed=0, sampler="ddim",
                steps=3, batch=2, skip_0=1.0, skip_1=1.0, skip_2=1.0, skip_3=1.0, skip_4=1.0, attention_off=[],
                time_off=False, state=None) | changes
    return list(args.values())


GENERATE = {
    "model_a": (NOT_A_NAME, "model A"),
    "model_b": ([v for v in NOT_A_NAME if v not in (None, "")], "network B"),
    "digit": (NOT_A_NAME + ["10", "3 ", "-1", "every digit"], "digit"),
    "guidance": (NOT_A_NUMBER + _out_of(0, 10, whole=False), "guidance"),
    "seed": (NOT_A_NUMBER + _out_of(0, 2**31 - 1, whole=True) + [2**63], "seed"),
    "sampler": (NOT_A_NAME + ["DDIM", "euler", "ddim "], "sampler"),
    "steps": (NOT_A_NUMBER + _out_of(1, 1000, whole=True), "steps"),
    "batch": (NOT_A_NUMBER + _out_of(1, 16, whole=True), "batch"),
    "skip_0": (NOT_A_NUMBER + _out_of(0, 3, whole=False), "skip scale"),
    "skip_4": ([None, "1", float("nan"), -1, 4, 10**400], "skip scale"),  # a hidden slider: still checked
    "attention_off": (NOT_A_SITE_LIST, "attention"),
    "time_off": (NOT_A_SWITCH, "time embedding"),
}
RERUN_B = {"model_a": GENERATE["model_a"], "model_b": GENERATE["model_b"], "skip_1": GENERATE["skip_0"],
           "attention_off": GENERATE["attention_off"], "time_off": GENERATE["time_off"],
           # a step or sample beyond this run but within another's is held to this run (test_app: "a view sent before")
           "step": (NOT_A_NUMBER + _out_of(0, MAX_STEPS, whole=True), "step")}
FEATURES = {"step": RERUN_B["step"],
            "block": (NOT_A_NAME + ["mid_block", "mid_block.attentions.0 ", "MID_BLOCK.ATTENTIONS.0", "down_blocks.9.resnets.0"], "block"),
            "sample_index": (NOT_A_NUMBER + _out_of(0, checks.MAX_BATCH - 1, whole=True), "sample"),
            "range_mode": (NOT_A_NAME + ["Global", "per channel"], "colour range")}
NOT_A_SESSION = [None, {}, "a", [], {"b": 1}, 0]


def _cases():
    """(case id, handler name, arguments as a function of the valid session state, words the error must say)."""
    cases = []
    for name, (values, says) in GENERATE.items():
        for i, value in enumerate(values):
            cases.append((f"generate-{name}-{i}", "generate", lambda state, name=name, value=value: _generate_arguments(**{name: value}), says))
    # the last case runs few enough passes but would keep too much: 2 × 200 × 16 sample-steps of 28×28 ≈ 57 MiB
    for steps, batch, digit in [(1000, 16, checks.DIGIT_CHOICES[1]), (1000, 9, checks.DIGIT_CHOICES[0]), (600, 16, "3"),
                                (200, 16, checks.DIGIT_CHOICES[0])]:
        cases.append((f"generate-budget-{steps}x{batch}", "generate",
                      lambda state, s=steps, b=batch, d=digit: _generate_arguments(steps=s, batch=b, digit=d, skip_0=0.0), "steps × batch"))
    rerun_defaults = dict(model_a="tiny", model_b=checks.SAME_AS_A, skip_0=1.0, skip_1=1.0, skip_2=1.0, skip_3=1.0, skip_4=1.0,
                          attention_off=[], time_off=False)
    for name, (values, says) in RERUN_B.items():
        for i, value in enumerate(values):
            def rerun_args(state, name=name, value=value):
                args = rerun_defaults | {"state": state, "step": 1}
                return list((args | {name: value}).values())
            cases.append((f"rerun_b-{name}-{i}", "rerun_b", rerun_args, says))
    feature_defaults = dict(step=1, block="mid_block.attentions.0", sample_index=0, range_mode="block")
    for name, (values, says) in FEATURES.items():
        for i, value in enumerate(values):
            cases.append((f"view_features-{name}-{i}", "view_features",
                          lambda state, name=name, value=value: [state, *(feature_defaults | {name: value}).values()], says))
    for i, value in enumerate(RERUN_B["step"][0]):
        cases.append((f"compute_numbers-step-{i}", "compute_numbers", lambda state, value=value: [state, value], "step"))
    for i, value in enumerate(NOT_A_NAME + ["x0", "x̂0"]):
        cases.append((f"export_gif-which-{i}", "export_gif", lambda state, value=value: [state, value], "animation"))
    for i, value in enumerate(NOT_A_SESSION):
        for handler, rest in [("view_features", [1, "mid_block.attentions.0", 0, "block"]),
                              ("compute_numbers", [1]), ("export_gif", ["x_t (noisy input)"])]:
            cases.append((f"{handler}-session-{i}", handler, lambda state, v=value, r=rest: [v, *r], "No run yet"))
    for i, value in enumerate(NOT_A_NAME):
        cases.append((f"ablation_panel-model_a-{i}", "ablation_panel", lambda state, v=value: [v, checks.SAME_AS_A], "model A"))
        cases.append((f"block_dropdown-model_a-{i}", "block_dropdown", lambda state, v=value: [v], "model A"))
    for i, value in enumerate(GENERATE["model_b"][0]):
        cases.append((f"ablation_panel-model_b-{i}", "ablation_panel", lambda state, v=value: ["tiny", v], "network B"))
    return cases + _explore_cases()


# B's options beyond the ablation: (t-window, timestep lie, FreeU b and s, h-space edit), then the session and the step
OPTION_DEFAULTS = dict(model_a="tiny", model_b=checks.SAME_AS_A, t_from=0, t_to=999, lie_mode=options.LIE_MODES[1], lie_value=100,
                       **{f"b_{i}": 1.0 for i in range(checks.MAX_SKIP_SLIDERS)}, **{f"s_{i}": 1.0 for i in range(checks.MAX_SKIP_SLIDERS)},
                       h_on=False, probe_t=500, component=0, strength=2.0, h_from=0, h_to=999)
T_VALUES = NOT_A_NUMBER + _out_of(0, 999, whole=True)
OPTIONS = {
    "model_a": GENERATE["model_a"], "model_b": GENERATE["model_b"],
    "t_from": (T_VALUES, "ablation window"), "t_to": (T_VALUES + [0.5], "ablation window"),
    "lie_mode": (NOT_A_NAME + ["offset", "No lie"], "timestep lie"),
    "lie_value": (NOT_A_NUMBER + _out_of(-999, 999, whole=True), "timestep lie value"),
    "b_0": (NOT_A_NUMBER + _out_of(0, 3, whole=False), "FreeU b"), "s_1": (NOT_A_NUMBER + _out_of(0, 3, whole=False), "FreeU s"),
    "b_4": ([None, "1", float("nan"), 4], "FreeU b"),  # a hidden slider: still checked
    "h_on": (NOT_A_SWITCH, "h-space edit"), "probe_t": (T_VALUES, "probe t"),
    "component": (NOT_A_NUMBER + _out_of(0, 7, whole=True), "component"),
    "strength": (NOT_A_NUMBER + _out_of(-10, 10, whole=False), "strength"), "h_from": (T_VALUES, "h-space window"),
}
BAD_SETUPS = [None, "", "   ", "nope", "[]", "3", '"tiny"', "{", '{"colour": 1}', '{"model": "../../etc/passwd"}', '{"model": ""}',
              '{"model": "tiny", "steps": 0}', '{"model": "tiny", "steps": "many"}', '{"model": "tiny", "batch": 17}',
              '{"model": "tiny", "seed": -1}', '{"model": "tiny", "seed": 1e400}', '{"model": "tiny", "guidance": NaN}',
              '{"model": "tiny", "guidance": 11}', '{"model": "tiny", "digit": 10}', '{"model": "tiny", "digit": true}',
              '{"model": "tiny", "sampler": "euler"}', '{"model": "tiny", "window": [500, 100]}', '{"model": "tiny", "window": 5}',
              '{"model": "tiny", "ablation": {"skip_scale": {"3": 0}}}', '{"model": "tiny", "ablation": {"skip_scale": {"28": 9}}}',
              '{"model": "tiny", "ablation": {"attention_off": ["x"]}}', '{"model": "tiny", "ablation": [1]}',
              '{"model": "tiny", "timestep_lie": {"fixed": 5000}}', '{"model": "tiny", "timestep_lie": {"offset": "a"}}',
              '{"model": "tiny", "h_edit": {"component": 99}}', '{"model": "tiny", "h_edit": {"probe_samples": 64}}',
              '{"model": "tiny", "h_edit": {"strength": 1e9}}', '{"model": "tiny", "h_edit": {"wat": 1}}',
              "{" + '"model": "tiny", ' * 2000 + "}", '{"model": "tiny", "steps": 3}' + " " * 30_000]


class FakeRequest:
    def __init__(self, **query):
        self.query_params = query


def _explore_cases():
    cases = []
    for name, (values, says) in OPTIONS.items():
        for i, value in enumerate(values):
            def option_args(state, name=name, value=value):
                return [*(OPTION_DEFAULTS | {name: value}).values(), state, 1]
            cases.append((f"set_b_options-{name}-{i}", "set_b_options", option_args, says))
    cases.append(("set_b_options-window-reversed", "set_b_options",
                  lambda state: [*(OPTION_DEFAULTS | {"t_from": 600, "t_to": 100}).values(), state, 1], "ablation window"))
    for i, value in enumerate(RERUN_B["step"][0]):
        cases.append((f"set_b_options-step-{i}", "set_b_options", lambda state, v=value: [*OPTION_DEFAULTS.values(), state, v], "step"))
    for i, value in enumerate(NOT_A_NUMBER + _out_of(2, 20, whole=True)):
        cases.append((f"sweep_ablation-windows-{i}", "sweep_ablation", lambda state, v=value: [state, v], "windows"))
    cases.append(("sweep_ablation-intact", "sweep_ablation", lambda state: [state, 3], "Set an ablation"))
    for i, value in enumerate(FEATURES["sample_index"][0]):
        cases.append((f"digit_decides-sample-{i}", "digit_decides", lambda state, v=value: [state, v], "sample"))
    for i, value in enumerate(NOT_A_NAME + ["a", "A ", "AB"]):
        for handler in ("export_tensors", "export_frames"):
            cases.append((f"{handler}-which-{i}", handler, lambda state, v=value: [state, v], "network"))
    for i, value in enumerate(NOT_A_SESSION):
        for handler, rest in [("sweep_ablation", [3]), ("digit_decides", [0]), ("export_tensors", ["A"]), ("export_frames", ["B"]),
                              ("current_setup", [])]:
            cases.append((f"{handler}-session-{i}", handler, lambda state, v=value, r=rest: [v, *r], "No run yet"))
    for i, text in enumerate(BAD_SETUPS):
        cases.append((f"apply_setup-{i}", "apply_setup", lambda state, t=text: [t], "setup"))
        if isinstance(text, str):
            cases.append((f"open_from_query-setup-{i}", "open_from_query", lambda state, t=text: ["tiny", FakeRequest(setup=t)], "setup"))
    for i, value in enumerate(NOT_A_NAME + ["skips", "What skips do"]):
        cases.append((f"apply_lesson-lesson-{i}", "apply_lesson", lambda state, v=value: [v, "tiny"], "lesson"))
        if isinstance(value, str) and value != "skips":
            cases.append((f"open_from_query-lesson-{i}", "open_from_query", lambda state, v=value: ["tiny", FakeRequest(lesson=v)], "lesson"))
    for i, value in enumerate(NOT_A_NAME):
        cases.append((f"apply_lesson-model_a-{i}", "apply_lesson", lambda state, v=value: ["what skips do", v], "model A"))
        cases.append((f"open_block-model_a-{i}", "open_block", lambda state, v=value: [v, "mid_block.resnets.1"], "model A"))
        cases.append((f"options_panel-model_a-{i}", "options_panel", lambda state, v=value: [v, checks.SAME_AS_A], "model A"))
        cases.append((f"freeu_preset_values-model_a-{i}", "freeu_preset_values", lambda state, v=value: [v, checks.SAME_AS_A], "model A"))
        cases.append((f"generate-after-a-setup-model_a-{i}", "generate",  # a setup applied, then its Generate
                      lambda state, v=value: [*_generate_arguments(model_a=v)[:-1], {"options_b": sessions.NO_OPTIONS}], "model A"))
    for i, value in enumerate(NOT_A_NAME + ["mid_block.resnets.1.update", "mid_block"]):
        cases.append((f"open_block-block-{i}", "open_block", lambda state, v=value: ["tiny", v], "block"))
        cases.append((f"block_clicked-name-{i}", "block_clicked", lambda state, v=value: ["tiny", {"name": v}], "block"))
    # the diagram's clicks: their payloads come from the page, so anything may arrive
    switches_now = [1.0] * checks.MAX_SKIP_SLIDERS + [[], False, "mid_block.attentions.0"]
    for i, value in enumerate([99, "28x", None, True, 28.5, [28], "1e9"]):
        cases.append((f"click_skip-resolution-{i}", "click_skip",
                      lambda state, v=value: ["tiny", checks.SAME_AS_A, *switches_now, {"resolution": v}], "skip resolution"))
    for i, value in enumerate(NOT_A_NAME + ["mid_block.resnets.0"]):
        cases.append((f"click_attention-site-{i}", "click_attention",
                      lambda state, v=value: ["tiny", checks.SAME_AS_A, *switches_now, {"site": v}], "attention site"))
    for i, value in enumerate([-1, 10**9, "0", None, 0.5, True]):
        cases.append((f"sample_clicked-index-{i}", "sample_clicked", lambda state, v=value: [state, {"index": v}], "sample"))
    for i, value in enumerate(GENERATE["model_b"][0]):
        cases.append((f"options_panel-model_b-{i}", "options_panel", lambda state, v=value: ["tiny", v], "network B"))
    return cases


CASES = _cases()
PANELS = (runs, features, numbers, options, share, switches, when)
NEEDS_REGISTRY = {"generate", "rerun_b", "view_features", "compute_numbers", "ablation_panel", "block_dropdown",
                  "set_b_options", "sweep_ablation", "digit_decides", "current_setup", "apply_setup", "apply_lesson",
                  "open_from_query", "open_block", "options_panel", "freeu_preset_values", "block_clicked", "click_skip",
                  "click_attention", "sample_clicked"}
TAKES_PROGRESS = {"generate", "rerun_b", "compute_numbers", "set_b_options", "sweep_ablation"}


def test_there_are_hundreds_of_hostile_cases_covering_every_handler():
    assert len(CASES) >= 200
    assert {handler for _, handler, _, _ in CASES} == NEEDS_REGISTRY | {"export_gif", "export_tensors", "export_frames"}


@pytest.fixture(scope="module")
def session(registry):
    """A valid session state: 3 DDIM steps, a batch of 2."""
    state, *_ = runs.generate(registry, *_generate_arguments(), progress=NoProgress())
    return state


@pytest.mark.parametrize("case_id, handler_name, arguments, says", CASES, ids=[c[0] for c in CASES])
def test_a_hostile_input_gets_a_plain_sentence(registry, session, case_id, handler_name, arguments, says):
    handler = next(getattr(panel, handler_name) for panel in PANELS if hasattr(panel, handler_name))
    if handler_name in NEEDS_REGISTRY:
        handler = functools.partial(handler, registry)
    kwargs = {"progress": NoProgress()} if handler_name in TAKES_PROGRESS else {}
    with pytest.raises(gr.Error) as refused:
        checks.user_errors(handler)(*arguments(session), **kwargs)
    message = refused.value.message
    assert not isinstance(refused.value, checks.InternalError), f"an unforeseen exception slipped through: {message}"
    assert says in message and "\n" not in message and len(message) < 600, message


def test_an_over_long_request_is_stopped_by_the_time_limit(tiny_weights, monkeypatch):
    registry = ModelRegistry(tiny_weights)  # a run kept from another test would be answered in no time
    monkeypatch.setattr(checks, "REQUEST_SECONDS", 0.0)
    with pytest.raises(gr.Error, match="limit"):
        checks.user_errors(functools.partial(runs.generate, registry))(*_generate_arguments(steps=3), progress=NoProgress())


def test_no_input_becomes_a_path(registry, monkeypatch):
    """Model names are looked up among the folders found at start-up; the loader never sees a visitor's string."""
    seen = []
    monkeypatch.setattr("playground.registry.load_pipeline", lambda path, name=None: seen.append(path))
    for name in ["../tiny", "tiny/../tiny", str(registry.root / "tiny"), "/", "classifier"]:
        with pytest.raises(gr.Error, match="unknown model"):
            checks.user_errors(functools.partial(features.block_dropdown, registry))(name)
    assert seen == []


# ---------------------------------------------------------------------------------------------
# Numerical health and determinism
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def overflowing_weights(tiny_weights, tmp_path):
    """A sound folder whose finite weights overflow float32 on the first forward (ε̂ = ±inf)."""
    root = tmp_path / "weights"
    shutil.copytree(tiny_weights, root)
    unet = PlaygroundUNet.from_pretrained(root / "tiny", subfolder="unet")
    with torch.no_grad():
        unet.conv_out.weight.mul_(1e38)
    write_pipeline(root / "overflow", unet)
    return root


def test_a_diverging_run_is_an_error_not_an_image(overflowing_weights):
    registry = ModelRegistry(overflowing_weights)
    with pytest.raises(gr.Error, match="NaN or infinite"):
        checks.user_errors(functools.partial(runs.generate, registry))(*_generate_arguments(model_b="overflow"), progress=NoProgress())


def test_non_finite_values_anywhere_in_a_trajectory_are_refused(session):
    blown = session["b"]
    eps = blown.eps.clone()
    eps[1, 0, 0, 3, 3] = float("inf")  # one pixel of one intermediate step: the final image may still look fine
    with pytest.raises(FloatingPointError, match="eps"):
        checks.finite(type(blown)(**{**blown.__dict__, "eps": eps}), "B")


def test_sampling_is_bit_identical_across_runs(tiny_weights):
    model = load_pipeline(tiny_weights / "tiny")
    for sampler in ("ddim", "ddpm", "dpm++"):
        settings = SampleSettings(sampler=sampler, steps=6, batch=3, seed=7, label=(1, 2, 3), guidance=2.0)
        first, second = sample(model, settings), sample(model, settings)
        assert all(torch.equal(getattr(first, q), getattr(second, q)) for q in ("x_t", "eps", "x0")), sampler


def test_sampling_agrees_across_thread_counts_within_float_tolerance():
    """1 vs 2 torch threads change the order of float32 sums, not the result.

    Measured on the flagship (guidance 2, 2-core CPU): 8 steps at batch 2, seeds 3 and 11, all three samplers:
    final images within 7.3e-6, ε̂ and x̂0 within 7.8e-5; 20 steps at batch 4: final within 9e-6, ε̂ and x̂0
    within 1.4e-4 (x̂0 amplifies ε̂ by 1/√ᾱ_t at high t). The bounds below are over 10x those: absolute
    1e-4 on the final images, 1e-3 on ε̂ and x̂0, in pixel units of [-1, 1]. An untrained random model is no
    test of this: its DDIM runs are chaotic and amplify the same rounding to 0.2.
    """
    model = load_pipeline(FLAGSHIP)
    threads = torch.get_num_threads()
    try:
        for sampler in ("ddim",):  # threads change the U-Net's sums, whatever the sampler (all three measured)
            settings = SampleSettings(sampler=sampler, steps=8, batch=2, seed=3, label=(1, 7), guidance=2.0)
            torch.set_num_threads(1)
            one = sample(model, settings)
            torch.set_num_threads(2)
            two = sample(model, settings)
            assert (one.final - two.final).abs().max() < 1e-4, sampler
            assert (one.eps - two.eps).abs().max() < 1e-3 and (one.x0 - two.x0).abs().max() < 1e-3, sampler
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# The live server: hostile requests through gradio_client, then a normal one; state is evicted.
# ---------------------------------------------------------------------------------------------

CAPACITY = 2
TTL_SECONDS = 2


@pytest.fixture(scope="module")
def served(tiny_weights):
    ttl = sessions.STATE_TTL_SECONDS
    sessions.STATE_TTL_SECONDS = TTL_SECONDS  # read by build_demo: short, so expiry is seen within the test
    try:
        demo = page.build_demo(tiny_weights)
    finally:
        sessions.STATE_TTL_SECONDS = ttl
    _, url, _ = page.serve(demo, server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                          state_session_capacity=CAPACITY)
    yield demo, url
    demo.close()


GOOD_GENERATE = ["tiny", checks.SAME_AS_A, "3", 2, 0, "ddim", 3, 1, 1, 1, 1, 1, 1, [], False]
LIVE_CASES = [
    ("/generate", _generate_arguments(steps=5000)[:-1]),
    ("/generate", _generate_arguments(batch=17)[:-1]),
    ("/generate", _generate_arguments(steps=1000, batch=16)[:-1]),
    ("/generate", _generate_arguments(seed=-1)[:-1]),
    ("/generate", _generate_arguments(guidance=1e308)[:-1]),
    ("/generate", _generate_arguments(sampler="euler")[:-1]),
    ("/generate", _generate_arguments(model_a="../../etc/passwd")[:-1]),
    ("/generate", _generate_arguments(model_a="ｔｉｎｙ")[:-1]),
    ("/generate", _generate_arguments(digit="t" * 100_000)[:-1]),
    ("/generate", _generate_arguments(attention_off=["no.such.site"])[:-1]),
    ("/generate", _generate_arguments(skip_0=-1)[:-1]),
    ("/generate", _generate_arguments(steps=None)[:-1]),
    ("/generate", _generate_arguments(batch="4")[:-1]),
    ("/features", [1, "mid_block.attentions.0", 0, "block"]),  # before Generate
    ("/features", [10**9, "mid_block.attentions.0", 0, "block"]),
    ("/features", [1, "\u202emid_block", 0, "block"]),
    ("/features", [1, "mid_block.attentions.0", 0, "rainbow"]),
    ("/gif", ["x̂0"]),
    ("/ablation_panel", ["/etc", checks.SAME_AS_A]),
    ("/block_choices", [None]),
    ("/sweep", [3]),  # before Generate
    ("/sweep", [10**9]),
    ("/digit_decides", [-1]),
    ("/b_options", [*(OPTION_DEFAULTS | {"t_from": 900, "t_to": 100}).values(), 1]),
    ("/b_options", [*(OPTION_DEFAULTS | {"lie_mode": "\u202eoffset"}).values(), 1]),
    ("/apply_setup", ["{"]),
    ("/apply_setup", ['{"model": "../../etc/passwd"}']),
    ("/lesson", ["../../etc/passwd", "tiny"]),
    ("/export_tensors", ["C"]),
    ("/export_frames", ["A"]),  # before Generate
]


def test_hostile_requests_through_the_server_are_refused_and_it_still_serves(served):
    _, url = served
    client = Client(url, verbose=False)
    for api_name, arguments in LIVE_CASES:
        with pytest.raises(AppError):
            client.predict(*arguments, api_name=api_name)
    result = client.predict(*GOOD_GENERATE, api_name="/generate")
    assert "Mean |A − B|" in result[-1]
    assert "t = " in client.predict(1, "mid_block.attentions.0", 0, "block", api_name="/features")[-1]


def _sessions_holding_trajectories(demo):
    return sum(isinstance(value, dict) and "a" in value
               for session in list(demo.state_holder.session_data.values()) for value in list(session.state_data.values()))


def test_session_state_is_bounded_and_expires_when_idle(served):
    demo, url = served
    for seed in range(CAPACITY + 2):  # more sessions than the server keeps
        Client(url, verbose=False).predict(*GOOD_GENERATE[:4], seed, *GOOD_GENERATE[5:], api_name="/generate")
    assert 1 <= _sessions_holding_trajectories(demo) <= CAPACITY
    deadline = time.monotonic() + TTL_SECONDS + 5  # Gradio sweeps expired state once a second
    while _sessions_holding_trajectories(demo) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _sessions_holding_trajectories(demo) == 0
