"""The card as Markdown, from its facts: what the model is, what it measured, its limits, how to load it."""

from __future__ import annotations

from typing import Any

MARK = "<!-- written by scenecls: it rewrites this file; edit a copy -->"  # the first line of every card


def render(facts: dict[str, Any], *, files: dict[str, str] | None = None) -> str:
    """The card as Markdown. ``files``: the model files it describes, by format (``keras``, ``tflite``,
    ``onnx``, ``savedmodel``, ``openvino``), as the loading examples name them."""
    files = files or {}
    classes = facts["classes"]
    height, width = facts["input"]["height"], facts["input"]["width"]
    title = f"Model card: {facts['run']}" if facts.get("run") else "Model card"
    lines = [MARK, f"# {title}", ""]
    what = f"A scene classifier for {len(classes)} classes: {', '.join(classes)}."
    if facts.get("backbone"):
        what += f" {facts['backbone']} backbone ({facts.get('weights')}), trained by scenecls"
        what += f" on {facts['created']}." if facts.get("created") else "."
    lines += [what, ""]
    lines += [
        "## Input and output",
        "",
        f"- Input: {height}x{width} {facts['input']['pixels']}. Resize photos to {height}x{width}; "
        "do not scale or normalise the pixels.",
        f"- Output: {facts['output']}.",
        "",
    ]
    lines += _data_lines(facts) + _test_lines(facts) + _calibration_lines(facts)
    lines += _use_lines(facts) + _loading_lines(facts, files)
    return "\n".join(lines).rstrip() + "\n"


def _data_lines(facts: dict[str, Any]) -> list[str]:
    data = facts.get("data")
    if not data:
        return ["## Training data", "", "Not known: this model was not exported from a run folder.", ""]
    images = data.get("images") or {}
    counts = ", ".join(f"{images[k]:,} {k}" for k in ("train", "val", "test") if images.get(k))
    recipe = facts.get("recipe") or {}
    return [
        "## Training data and recipe",
        "",
        f"- Images: {counts or 'not recorded'} (data fingerprint `{data.get('fingerprint')}`).",
        f"- Recipe: head of {recipe.get('dense')} dense layers, {recipe.get('unfreeze')} blocks fine-tuned, "
        f"seed {recipe.get('seed')}.",
        *_teacher_lines(facts.get("teacher")),
        f"- Versions: {_versions(facts.get('versions'))}.",
        "",
    ]


def _teacher_lines(teacher: dict[str, Any] | None) -> list[str]:
    """A student's teacher, in one line: who it is and what the student learnt from it."""
    if not teacher:
        return []
    kind = "an ensemble" if teacher.get("ensemble") else "a run"
    unlabelled = teacher.get("unlabelled_images") or 0
    fingerprint = teacher.get("unlabelled_fingerprint")
    extra = f" and on {unlabelled:,} unlabelled images (fingerprint `{fingerprint}`)" if unlabelled else ""
    return [
        f"- Teacher: {kind}, `{teacher.get('run')}` ({teacher.get('backbone')}, test accuracy "
        f"{_percent(teacher.get('test_accuracy'))}); this model learnt its {teacher.get('targets')} "
        f"targets on the training images{extra}."
    ]


def _versions(versions: Any) -> str:
    if not isinstance(versions, dict):
        return "not recorded"
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _test_lines(facts: dict[str, Any]) -> list[str]:
    test = facts.get("test")
    if not test:
        why = "the run had no test split" if facts.get("run") else "no run record"
        return ["## Measured accuracy", "", f"Not measured on held-out test images ({why}).", ""]
    lines = [
        "## Measured accuracy",
        "",
        f"**{_percent(test.get('accuracy'))}** on {test.get('images') or 'the'} test images "
        f"(from {test['source']}).",
        "",
    ]
    if test.get("per_class"):
        lines += ["| class | accuracy (recall) | precision | test images |", "|---|---|---|---|"]
        for row in test["per_class"]:
            cells = [row["class"], _percent(row["accuracy"]), _percent(row["precision"]), row["images"]]
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
        lines.append("")
    return lines


def _calibration_lines(facts: dict[str, Any]) -> list[str]:
    calibration, test = facts.get("calibration"), facts.get("test") or {}
    if not calibration:
        return []
    temperature = calibration.get("temperature")
    lines = ["## Confidence", ""]
    if temperature not in (None, 1, 1.0):
        lines.append(
            f"- Calibrated by temperature scaling (T = {temperature:.3f}, fitted on the "
            f"{calibration.get('fitted_on') or 'validation'} images): a confidence of 0.9 is right "
            "about 9 times in 10."
        )
    else:
        lines.append("- Temperature left at 1 (fitting one did not make the confidences more honest).")
    before, after = calibration.get("test_ece_before"), calibration.get("test_ece_after")
    if after is not None:
        lines.append(f"- Expected calibration error on the test images: {after:.3f} (before: {before:.3f}).")
    coverage = test.get("coverage") or []
    if coverage:
        lines += [
            "",
            "Answering only above a confidence floor (`--min-confidence`; the rest are `unknown`):",
            "",
            "| floor | answered | accuracy of those answered |",
            "|---|---|---|",
        ]
        lines += [
            f"| {row['min_confidence']:.2f} | {_percent(row['coverage'])} | {_percent(row['accuracy'])} |"
            for row in coverage
        ]
    return [*lines, ""]


def _use_lines(facts: dict[str, Any]) -> list[str]:
    classes = facts["classes"]
    lines = [
        "## Intended use and known limits",
        "",
        f"- Made to tell these {len(classes)} kinds of scene apart in photographs like its training images. "
        "It knows no other class: any other picture still gets one of these, so set a confidence floor "
        "where that matters.",
        f"- It sees a {facts['input']['height']}x{facts['input']['width']} copy of each photo: detail "
        "smaller than that is lost.",
    ]
    for cell in (facts.get("test") or {}).get("confusions") or []:
        lines.append(
            f"- {cell['true']} is taken for {cell['predicted']} in {cell['images']} of {cell['of']} "
            "test images."
        )
    if facts.get("weights", "").startswith("none"):
        lines.append("- Its backbone started from random weights, not ImageNet: expect low accuracy.")
    return [*lines, ""]


def _loading_lines(facts: dict[str, Any], files: dict[str, str]) -> list[str]:
    height, width = facts["input"]["height"], facts["input"]["width"]
    keras_file = files.get("keras", "best.keras")
    fastest = files.get("tflite") or keras_file
    lines = [
        "## How to load it",
        "",
        "With scenecls (any of the formats below):",
        "",
        "```bash",
        f"scenecls predict photo.jpg --model {fastest}",
        f"scenecls serve {fastest}",
        "```",
        "",
        f"Every format takes a float32 batch `(n, {height}, {width}, 3)` of 0-255 RGB pixels:",
        "",
        *_python(
            "import numpy as np",
            "from PIL import Image",
            "",
            f"pixels = np.asarray(Image.open('photo.jpg').convert('RGB').resize(({width}, {height})), "
            "np.float32)[None]",
        ),
    ]
    shown = {**files, "keras": keras_file} if ("keras" in files or not files) else files
    for fmt, snippet in SNIPPETS.items():
        if fmt in shown:
            lines += snippet(shown[fmt])
    return lines


def _python(*code: str) -> list[str]:
    return ["```python", *code, "```", ""]


SNIPPETS = {  # each format's loading example, given the file's name
    "keras": lambda name: [
        "Keras 3:",
        "",
        *_python(
            "import keras",
            "",
            f"model = keras.saving.load_model('{name}')",
            "probabilities = model.predict(pixels)",
        ),
    ],
    "tflite": lambda name: [
        "LiteRT (`pip install ai-edge-litert`):",
        "",
        *_python(
            "from ai_edge_litert.interpreter import Interpreter",
            "",
            f"interpreter = Interpreter(model_path='{name}')",
            "interpreter.allocate_tensors()",
            "interpreter.set_tensor(interpreter.get_input_details()[0]['index'], pixels)",
            "interpreter.invoke()",
            "probabilities = interpreter.get_tensor(interpreter.get_output_details()[0]['index'])",
        ),
    ],
    "onnx": lambda name: [
        "ONNX Runtime:",
        "",
        *_python(
            "import onnxruntime",
            "",
            f"session = onnxruntime.InferenceSession('{name}')",
            "probabilities = session.run(None, {session.get_inputs()[0].name: pixels})[0]",
        ),
    ],
    "openvino": lambda name: [
        "OpenVINO:",
        "",
        *_python(
            "import openvino",
            "",
            f"compiled = openvino.Core().compile_model('{name}', 'CPU')",
            "probabilities = compiled(pixels)[0]",
        ),
    ],
    "savedmodel": lambda name: [
        "TensorFlow Serving (its `serving_default` signature takes encoded images):",
        "",
        "```bash",
        f'docker run -p 8501:8501 -v "$PWD/{name}:/models/scenes/1" -e MODEL_NAME=scenes tensorflow/serving',
        "curl -s localhost:8501/v1/models/scenes:predict "
        '-d "{\\"instances\\": [{\\"b64\\": \\"$(base64 -w0 photo.jpg)\\"}]}"',
        "```",
        "",
    ],
}


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "n/a"
