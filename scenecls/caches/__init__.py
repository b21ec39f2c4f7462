"""The caches that let training run only what trains, shared by ``train``, ``inspect`` and ``cache``.

- :mod:`~scenecls.caches.store`: what an entry is on disk (one protocol for every kind).
- :mod:`~scenecls.caches.features`: the frozen backbone's pooled features, for the head phase and for
  ``inspect``'s near duplicates and label errors.
- :mod:`~scenecls.caches.activations`: a fine-tuning stage's frozen lower part's outputs.
- :mod:`~scenecls.caches.listing`: what the caches hold, and clearing them (``scenecls cache``).

The package sits below ``training`` and ``inspection`` and imports neither.
"""
