"""Interpretation: what heads say in words, where they look, and how well we found them.

Five tools, all working on tensors the earlier stages already produce:

* **TextSpan descriptions** (Gandelsman et al. 2024, "Interpreting CLIP's Image Representation
  via Text-Based Decomposition"): a greedy basis of text directions that explains a head's
  outputs over many images, with the share of the head's variance each text explains.
* **Text pools**: shipped lists of short image descriptions to draw that basis from
  (``data/text_pools/<name>.txt``).
* **Patch maps**: each image patch's contribution to a class margin through a head set, and an
  overlay of that map on the image.
* **Word attributions**: Shapley values of the words of a caption for a head set, exact for
  short captions and permutation-sampled for long ones (no ``shap`` dependency).
* **Grading and importance**: precision@k and rank correlations of LTC's head scores against a
  ground-truth oracle (the synthetic benchmark knows each head's true background effect), and
  the change in worst-group / average accuracy when single heads or head sets are ablated.

Shapes: ``head_terms [n_images, d_embed]``, ``heads [n_images, layer, head, d_embed]``,
``spatial [batch, pos, d_embed]`` (position 0 is the class token, then patches row-major),
per-head tables ``[layer, head]``.

Example (TextSpan on a stored decomposition)::

    >>> pool = ltc.interpret.load_text_pool("general")                     # doctest: +SKIP
    >>> emb = model.encode_text(pool)                                       # doctest: +SKIP
    >>> tables = ltc.interpret.textspan_heads(store.terms.heads, store.terms.layers, emb, pool,
    ...                                       heads_to_describe=[(3, 1)])   # doctest: +SKIP
    >>> tables["L3H1"].head()                                               # doctest: +SKIP
"""

from .attributions import CaptionValue, head_text_value, shapley_values, word_shapley
from .importance import (ablation_importance, average_ranks, grade_heads, kendall_tau, margin_spread,
                         plot_importance_heatmap, plot_scores_vs_oracle, shapley_heads, spearman)
from .patches import model_view, patch_margin_map, pick_examples, plot_patch_map
from .textspan import TEXT_POOL_DIR, list_text_pools, load_text_pool, textspan, textspan_heads

__all__ = [
    "TEXT_POOL_DIR",
    "load_text_pool",
    "list_text_pools",
    "textspan",
    "textspan_heads",
    "patch_margin_map",
    "model_view",
    "plot_patch_map",
    "pick_examples",
    "shapley_values",
    "word_shapley",
    "CaptionValue",
    "head_text_value",
    "average_ranks",
    "spearman",
    "kendall_tau",
    "grade_heads",
    "margin_spread",
    "plot_scores_vs_oracle",
    "ablation_importance",
    "plot_importance_heatmap",
    "shapley_heads",
]
