"""The offline synthesizer: kernels from template families and transformations, no model.

    match_family(spec)                    the family the reference's traced graph belongs to
    render(spec, family, config)          the candidate module for a config (replayable)
    transforms_for(family, config, diagnosis, target)
                                          single-knob moves, best first for the diagnosis
    OfflineSynthesizer(rng_seed).propose(request)
                                          seeds, or children of a parent

Families: pointwise and rotary (pointwise.py), softmax, normalization and reduction
(rowwise.py), matmul (matmul.py), cross_entropy (cross_entropy.py), embedding_bag and
segment_sum (jagged.py), bucketize (bucketize.py).
"""

from kevolve.synth.offline.families import FamilyMatch, families, match_family, render, template_for
from kevolve.synth.offline.synthesizer import OfflineSynthesizer, config_key
from kevolve.synth.offline.transforms import PREFERENCES, apply, transforms_for

__all__ = ["FamilyMatch", "OfflineSynthesizer", "PREFERENCES", "apply", "config_key", "families", "match_family",
           "render", "template_for", "transforms_for"]
