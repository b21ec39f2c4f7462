"""The model card: what a trained model is, what it was measured to do, where it fails, and how to load
it, written by the tool from the run's own record (never by hand), as ``MODEL_CARD.md`` and as JSON.

Its facts come from the run folder: the recipe and data (``config.json``), the final test and the
temperature (``metrics.json``) and, when ``scenecls evaluate`` has run on the run's own data since, its
fuller ``evaluation.json``. A model without a run (a bare ``.keras`` file exported) gets a card that says
what is known and that nothing was measured.
"""

from scenecls.model_card.facts import card_facts
from scenecls.model_card.page import MARK, render
from scenecls.model_card.writing import CARD, is_ours, refresh_card, write_export_card, write_run_card

__all__ = ["CARD", "MARK", "card_facts", "is_ours", "refresh_card", "render", "write_export_card",
           "write_run_card"]  # fmt: skip
