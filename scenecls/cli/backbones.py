"""``scenecls backbones``: what can be trained on, without building any model."""

from __future__ import annotations

import click

from scenecls.cli.options import format_option
from scenecls.cli.output import Output


@click.command("backbones")
@format_option()
@click.pass_obj
def backbones(out: Output, fmt: str) -> None:
    """List the backbones with input size, parameters, blocks, layers and cached weights."""
    from scenecls.models.registry import backbone_names, cached_weights, get_spec, keras_cache_dir

    rows = []
    for name in backbone_names():
        spec = get_spec(name)
        cached = cached_weights(spec)
        rows.append(
            {
                "name": spec.name,
                "input_size": spec.default_size,
                "min_size": spec.min_size,
                "params": spec.params,
                "blocks": spec.blocks,
                "layers": spec.layers,
                "input_scaling": spec.preprocessing,
                "imagenet_cached": cached is not None,
                "weights_file": spec.weights_file(spec.default_size),
            }
        )
    if fmt == "json":
        out.json(rows)
        return
    columns = list(rows[0])
    if fmt == "csv":
        out.csv(columns, [[r[c] for c in columns] for r in rows])
        return
    out.table(
        ["backbone", "input", "params", "blocks", "layers", "input scaling", "ImageNet weights"],
        [
            [
                r["name"],
                f"{r['input_size']}x{r['input_size']} (min {r['min_size']})",
                f"{r['params'] / 1e6:.1f} M",
                r["blocks"],
                r["layers"],
                r["input_scaling"],
                "cached" if r["imagenet_cached"] else "not cached",
            ]
            for r in rows
        ],
        numeric=["params", "blocks", "layers"],
    )
    out.log(f"Keras weight cache: {keras_cache_dir()}")
