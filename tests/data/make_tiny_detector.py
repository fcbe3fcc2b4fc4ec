"""Builds tests/data/tiny_detector.onnx, the tiny YOLO-layout model the ONNX backend's tests run.

Regenerate (from the repository root; needs Python 3 and the `onnx` package, no network at test time):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install onnx numpy
    /tmp/venv/bin/python tests/data/make_tiny_detector.py

The output is deterministic (same bytes for the same `onnx` version), a few KB, and is committed so
that `cargo test --features onnx` downloads nothing.

What the model computes (it is a real function of its input, so the tests mean something):

- input `images`: float32 [batch, 3, 64, 64], RGB in 0..1, NCHW; `batch` is a symbolic dimension,
  so the loader's "fix symbolic dims" path runs too.
- brightness = ReduceMean over the 3 channels, then AveragePool with a 16x16 window and stride 4:
  a 13x13 grid of windows; window (row r, col c) covers input pixels x in [4c, 4c+16),
  y in [4r, 4r+16).
- score = Sigmoid((brightness - 0.65) * 20): near 1 where a window is bright, near 0 where dark.
  A bright 16x16 square aligned with a window scores ~1 there; the four windows shifted by one
  stride (brightness 0.75) score ~0.88 and are removed by NMS (IoU 0.6 > 0.45); diagonal
  neighbours (0.5625) score 0.15, under the 0.25 confidence threshold. So one detection survives,
  and only because NMS works.
- output `output0`: float32 [batch, 5, 169], the YOLOv8 layout [1, 4 + C, N] with C = 1:
  rows cx, cy, w, h (constant: each window's centre, w = h = 16, in input pixels) then the score.
- metadata_props names = "{0: 'square'}", as Ultralytics writes it.
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 64  # input height and width, pixels
WINDOW = 16  # pooling window and box side, pixels
STRIDE = 4  # window step, pixels
THRESHOLD = 0.65  # mean brightness at which the score is 0.5
GAIN = 20.0  # sigmoid steepness

GRID = (SIZE - WINDOW) // STRIDE + 1  # 13
ANCHORS = GRID * GRID  # 169


def build() -> onnx.ModelProto:
    centres = np.arange(GRID, dtype=np.float32) * STRIDE + WINDOW / 2
    cy, cx = np.meshgrid(centres, centres, indexing="ij")  # row-major: index = r * GRID + c
    boxes = np.stack(
        [
            cx.reshape(-1),
            cy.reshape(-1),
            np.full(ANCHORS, WINDOW, np.float32),
            np.full(ANCHORS, WINDOW, np.float32),
        ]
    ).reshape(1, 4, ANCHORS)

    inits = [
        numpy_helper.from_array(np.array([THRESHOLD], np.float32), "threshold"),
        numpy_helper.from_array(np.array([GAIN], np.float32), "gain"),
        numpy_helper.from_array(np.array([0, 1, ANCHORS], np.int64), "score_shape"),
        numpy_helper.from_array(boxes.astype(np.float32), "boxes"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["luma"], axes=[1], keepdims=1),
        helper.make_node(
            "AveragePool",
            ["luma"],
            ["window_mean"],
            kernel_shape=[WINDOW, WINDOW],
            strides=[STRIDE, STRIDE],
        ),
        helper.make_node("Sub", ["window_mean", "threshold"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score_grid"]),
        helper.make_node("Reshape", ["score_grid", "score_shape"], ["score"]),
        # Boxes are [1, 4, N]; the model is meant for batch 1, as YOLO exports are.
        helper.make_node("Concat", ["boxes", "score"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, ANCHORS])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="corelane make_tiny_detector.py",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 7
    helper.set_model_props(model, {"names": "{0: 'square'}"})
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_detector.onnx")
    model = build()
    onnx.save(model, out)
    print(f"wrote {out}: {os.path.getsize(out)} bytes, output [1, 5, {ANCHORS}]")


if __name__ == "__main__":
    main()
