"""Built-in methods of the generalisation lab (protocols may use them by name or extend them).

A method is a mapping with:

* ``config``: overrides of the training config (any section: ``train``, ``model``, ``data``,
  ``dann``, ``finetune``, ``inference``);
* ``model_from``: reuse the trained model of another method (same experiment and seed) and only
  evaluate differently (test-time methods: histogram matching, TENT);
* ``init_from``: initialise from another method's model and train (fine-tuning);
* ``checkpoint``: a trained model evaluated as is, without training: a checkpoint path
  (relative paths are tried from the working directory, then from the protocol's folder) or
  ``default`` for the shipped model; other methods can ``init_from`` or ``model_from`` it;
* ``train_on``: ``sources`` (default), ``finetune_pool`` (labelled target subjects) or
  ``sources+finetune_pool`` (the k pool subjects together with all source cases);
* ``adaptation_pool``: add the experiment's unlabelled adaptation pool (``role:
  target_unlabeled``), e.g. for DANN;
* ``epochs_scale``: multiply the (profile's) number of epochs, e.g. shorter fine-tuning;
* ``compare_to``: methods it is additionally tested against (besides the protocol baseline).
"""

from __future__ import annotations

import copy
from typing import Any

#: Keys a method mapping may have.
METHOD_KEYS = (
    "name",
    "base",
    "description",
    "config",
    "model_from",
    "init_from",
    "checkpoint",
    "train_on",
    "adaptation_pool",
    "epochs_scale",
    "compare_to",
)

#: The built-in methods.
BUILTIN_METHODS: dict[str, dict[str, Any]] = {
    "baseline": {
        "description": "no augmentation",
        "config": {"train": {"augmentation": "none"}},
    },
    "spatial": {
        "description": "spatial augmentation (turns/flips, affine, elastic)",
        "config": {"train": {"augmentation": "spatial"}},
    },
    "strong": {
        "description": "spatial + MR intensity augmentation (the v1 shipped recipe)",
        "config": {"train": {"augmentation": "strong"}},
    },
    "light": {
        "description": "spatial + milder MR intensity augmentation",
        "config": {"train": {"augmentation": "light"}},
    },
    "upright": {
        "description": "strong without the random 90° turns and flips (the v3 shipped recipe)",
        "config": {"train": {"augmentation": "strong", "orientation_augmentation": False}},
    },
    "light-upright": {
        "description": "light without the random 90° turns and flips",
        "config": {"train": {"augmentation": "light", "orientation_augmentation": False}},
    },
    "upright-swa": {
        "description": "upright, with the weights of the last quarter of the epochs averaged (SWA) "
        "at a constant learning rate of 5e-4",
        "config": {
            "train": {
                "augmentation": "strong",
                "orientation_augmentation": False,
                "swa_start": 0.75,
                "swa_lr": 5e-4,
            }
        },
    },
    "mri-artefacts": {
        "description": "strong + MRI artefacts (ghosting, motion, spikes, Gibbs, anisotropy, "
        "bias field)",
        "config": {"train": {"augmentation": "strong", "extra_augmentation": ["mri_artefacts"]}},
    },
    "appearance": {
        "description": "strong + random intensity curves + RandConv + MixStyle",
        "config": {
            "train": {"augmentation": "strong", "extra_augmentation": ["appearance"]},
            "model": {"mixstyle_layers": [0, 1]},
        },
    },
    "histmatch": {
        "description": "the strong model, test images histogram-matched to the training reference",
        "model_from": "strong",
        "config": {"inference": {"harmonization": "histogram"}},
    },
    "tent": {
        "description": "the strong model with TENT entropy minimisation per test volume",
        "model_from": "strong",
        "config": {"inference": {"adaptation": "tent"}},
    },
    "dann": {
        "description": "strong + domain-adversarial training on the unlabelled adaptation pool",
        "adaptation_pool": True,
        "config": {"train": {"augmentation": "strong"}, "dann": {"enabled": True}},
    },
    "balanced": {
        "description": "strong, every source domain sampled equally often (multi-domain)",
        "config": {"train": {"augmentation": "strong"}, "data": {"sampling": "balanced"}},
    },
    "finetune": {
        "description": "fine-tune the strong model on k labelled target subjects",
        "init_from": "strong",
        "train_on": "finetune_pool",
        "epochs_scale": 0.5,
        "config": {
            "train": {"augmentation": "strong", "lr": 5e-4, "warmup_epochs": 0},
            "finetune": {"trainable": "all", "k_subjects": 4},
        },
    },
}

#: Default profiles: ``quick`` for 2 CPU cores (about 10 min per training run: 2 000
#: iterations, the schedule of the first ACDC cross-validation, mean Dice 0.84 on held-out ACDC
#: with the v1 recipe), ``full`` for
#: a GPU (the shipped model's schedule) and ``smoke`` (a few hundred iterations of a tiny network:
#: checks that a protocol runs end to end; its Dice values are meaningless).
DEFAULT_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "seeds": [0],
        "max_subjects_per_target": 0,
        "config": {
            "model": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 0},
            "train": {
                "epochs": 6,
                "iterations_per_epoch": 50,
                "batch_size": 8,
                "patch_size": 128,
                "warmup_epochs": 1,
                "val_interval": 2,
                "n_val_monitor": 2,
                "num_threads": 2,
            },
        },
    },
    "quick": {
        "seeds": [0],
        "max_subjects_per_target": 0,
        "config": {
            "train": {
                "epochs": 20,
                "iterations_per_epoch": 100,
                "batch_size": 16,
                "patch_size": 160,
                "warmup_epochs": 2,
                "val_interval": 5,
                "n_val_monitor": 4,
                "num_threads": 2,
            },
        },
    },
    "full": {
        "max_subjects_per_target": 0,
        "config": {
            "train": {
                "epochs": 100,
                "iterations_per_epoch": 100,
                "batch_size": 16,
                "patch_size": 160,
                "warmup_epochs": 2,
                "val_interval": 5,
            },
        },
    },
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new mapping: ``override`` merged into ``base`` (nested mappings merged, rest replaced).

    The result shares no mutable values with its inputs.

    Example:
        >>> deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}})
        {'a': {'x': 1, 'y': 3}}
    """
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
