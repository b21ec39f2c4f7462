"""Seconds to write and read a run's checkpoint, as Keras does it and as ``scenecls`` does it.

Run: python benchmarks/checkpoint_save.py [--backbones mobilenet_v2,xception] [--size 224] [--repeats 5]
A fine-tuning run writes ``last.keras`` after every epoch (the whole model and its optimizer's state) and
reads ``best.keras`` at its end. Keras (3.15) rebuilds, for every layer it walks, the set of attributes
its saving skips, because it stores that set under one name and looks it up under another;
``scenecls.classifier.save_model`` keeps the sets (see ``_cache_keras_skipsets``). "keras" saves in a
new thread each time, where Keras's per-thread state is empty, as every save is without the kept sets.
Random weights: the file's size and layout are those of the ImageNet model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import machine


def _timed(repeats: int, own_thread: bool, work, *args, **kwargs) -> float:
    """The median seconds of ``work(*args, **kwargs)`` over ``repeats`` calls (each in a new thread if
    ``own_thread``)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        if own_thread:
            thread = threading.Thread(target=work, args=args, kwargs=kwargs)
            thread.start()
            thread.join()
        else:
            work(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="mobilenet_v2,xception")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import keras

    from scenecls.classifier import _cache_keras_skipsets, build_classifier, load_model, save_model
    from scenecls.unfreeze import all_layers

    print(f"machine: {machine()}; {args.size} px, median of {args.repeats}")
    folder = Path(tempfile.mkdtemp(prefix="scenecls-bench-"))
    for backbone in args.backbones.split(","):
        model = build_classifier(backbone, 6, size=args.size, weights=None)
        for layer in all_layers(model):  # as in fine-tuning (--unfreeze all): every slot in the file
            layer.trainable = True
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
        model.optimizer.build(model.trainable_variables)
        path = folder / f"{backbone}.keras"
        save_model(model, path)
        size = path.stat().st_size / 1e6
        plain = folder / "plain.keras"
        _cache_keras_skipsets()  # in this thread; a new thread starts without them
        repeats = args.repeats
        for label, seconds in (
            ("keras save", _timed(repeats, True, model.save, plain)),
            ("keras save, sets kept", _timed(repeats, False, model.save, plain)),
            ("save_model (+ SHA-256)", _timed(repeats, False, save_model, model, path)),
            ("load_model", _timed(repeats, False, load_model, path, compile=True)),
        ):
            print(f"{backbone:<14} {size:6.1f} MB  {label:<24} {seconds:6.2f} s")
        del model
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
