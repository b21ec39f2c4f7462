"""How long deleting a finished tf.data iterator takes, with tf.data's autotuning on and off.

Run: python benchmarks/iterator_teardown.py [--passes 12]
Each pass reads the training (then validation) images through the pipeline while MobileNetV2 runs on
every batch, as an epoch does, and then deletes the iterator. With autotuning on, the deletion now
and then waits seconds for the autotuning thread; ``make_dataset`` turns it off.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import dataset, machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passes", type=int, default=12)
    args = parser.parse_args()

    import logging

    import tensorflow as tf

    logging.getLogger("absl").setLevel(logging.ERROR)  # "Changing the value of option enabled": meant

    from scenecls.classifier import build_classifier, inference_function
    from scenecls.data.pipeline import make_dataset, prepare_data

    root, source = dataset()
    data = prepare_data(root, val_split=0.2, seed=0)
    forward = inference_function(build_classifier("mobilenet_v2", 6, size=150, weights=None), 32)
    print(f"data: {source}; machine: {machine()}")

    def autotuned(split):
        """make_dataset with tf.data's default autotuning back on (the later options win)."""
        options = tf.data.Options()
        options.autotune.enabled = True
        return make_dataset(split, (150, 150), 32).with_options(options)

    for label, build in (
        ("autotune on ", autotuned),
        ("make_dataset", lambda split: make_dataset(split, (150, 150), 32)),
    ):
        deletions = []
        for i in range(args.passes):
            iterator = iter(build(data.train if i % 2 == 0 else data.val))
            for images, _ in iterator:
                np.asarray(forward(images))
            start = time.perf_counter()
            del iterator
            deletions.append(time.perf_counter() - start)
        stalls = sum(d > 0.2 for d in deletions)
        print(
            f"{label}: iterator deletion {' '.join(f'{d:.2f}' for d in deletions)} s; "
            f"{stalls} of {args.passes} over 0.2 s, {sum(deletions):.1f} s in all"
        )


if __name__ == "__main__":
    main()
