"""The training configuration (``training.yaml``), validated, with the paper's defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessSection(_Section):
    """Preprocessing; the input size, channels and slice count come from ``network``."""

    slice_spacing_mm: float = Field(default=3.0, gt=0)
    # Which num_slices of a longer series: "top" (the authors' code) or "lungs" (the
    # window with the most chest cavity, so a scan from the neck keeps its lung bases).
    z_window: Literal["top", "lungs"] = "top"
    # "repeat": the one window below in every channel (the paper); "pe_lung_mediastinum":
    # the PE, lung and mediastinal windows as three channels (RSNA-STR 2020 winners);
    # "pe_neighbours": 2.5-D, the PE window of the slice above, itself and the one below;
    # "pe_lung_defect": the PE and lung windows and a source-resolution filling-defect map.
    channel_windows: Literal[
        "repeat", "pe_lung_mediastinum", "pe_clot_mediastinum", "pe_neighbours", "pe_lung_defect"
    ] = "repeat"
    window_center: float = 100.0
    window_width: float = Field(default=700.0, gt=0)
    segment: bool = True
    crop: bool = False
    min_slices: int = Field(default=10, ge=1)
    # The filling-defect map (pe_lung_defect): what counts as dark around an occluded
    # artery (-500: lung only, as 0.5.0; -60: mediastinal fat too, for hilar arteries),
    # and whether lit pixels without a lit neighbour are cleared (vessel-edge blips).
    defect_surround_hu: float = -500.0
    defect_drop_isolated: bool = False


class NetworkSection(_Section):
    """The two networks."""

    backbone: Literal["inception_resnet_v2", "small", "compact"] = "inception_resnet_v2"
    input_size: int = Field(default=386, ge=16)
    channels: Literal[1, 3] = 3
    encoding_dim: int = Field(default=64, ge=1)
    num_slices: int = Field(default=96, ge=1)
    stack_head: Literal["reference", "attention", "top_slices"] = "reference"
    # Global pooling of the CNN's last feature map: "avg" (the paper), "max" or "gem".
    pooling: Literal["avg", "max", "gem"] = "avg"
    # None (random), "imagenet" (from the Keras cache), or the path of an .h5 file.
    weights: str | None = "imagenet"


class SliceCNNSection(_Section):
    """Stage 1: the slice CNN (Adam with inverse-time decay, as the authors' Keras 2 code)."""

    batch_size: int = Field(default=48, ge=1)
    epochs: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    lr_decay: float = Field(default=0.01, ge=0)
    # Augment training slices (each epoch takes every positive slice and a fresh draw of
    # as many negatives, so the classes are balanced without copies).
    augment: bool = True
    # The chance that a training slice, of either class, is augmented in an epoch.
    augment_probability: float = Field(default=0.5, ge=0, le=1)
    # How each epoch's negatives are drawn: "uniform" over every negative slice, or
    # "matched" to the levels (slots) where the positive slices lie, with a quarter
    # uniform. Emboli lie mostly at the hila; a uniform draw teaches the CNN that the
    # hilum is positive, and then a negative study's hilum outscores most emboli.
    # The validation subset is drawn the same way.
    negatives: Literal["uniform", "matched"] = "uniform"
    # The share of each epoch's negatives taken from the hardest: every
    # hard_negative_every epochs the CNN scores hard_negative_pool negative training slices
    # drawn at random, and the highest-scoring of them join the following epochs' draw
    # (model.training.stages.HardNegativeMiner). A negative study's stack probability is
    # its highest slices', and a random draw seldom shows the CNN the few negative slices
    # that look like clot. 0: a random draw only. Measured once (docs/ablations.md, session
    # 15): 0.5 gave a held-out stack AUC of 0.838 against 0.871 without it.
    hard_negatives: float = Field(default=0.0, ge=0, lt=1)
    hard_negative_pool: int = Field(default=4000, ge=1)
    hard_negative_every: int = Field(default=2, ge=1)
    # Batches of un-augmented training slices over which the kept CNN's batch-norm
    # statistics are re-estimated after training ("precise BN"); 0 keeps the moving
    # averages of training, which lag the weights.
    batch_norm_batches: int = Field(default=100, ge=0)
    # Momentum of the batch norms' moving statistics while training (Keras: 0.99). The
    # validation loss that picks the kept epoch is computed with them; at 0.99 they
    # describe a network about a hundred steps old, and the small CNN's validation loss
    # swung between 0.55 and 3.2 from one epoch to the next. Inference never uses it.
    batch_norm_momentum: float = Field(default=0.99, gt=0, lt=1)
    # Which epoch's weights are kept: the lowest validation loss, or the highest validation
    # slice ROC AUC. The loss also rises when a CNN grows overconfident on a few slices
    # while it still ranks slices better; the AUC measures only the ranking, which is what
    # the stack head and the calibrator (fitted afterwards) use.
    keep: Literal["val_loss", "val_auc"] = "val_loss"
    # Compute precision while training: bfloat16 is Keras' mixed_bfloat16 (float32
    # weights). On this project's CPU (AVX512-BF16) a bare compact-CNN step took two
    # thirds of the float32 time, but whole epochs, with loading and augmentation, only
    # about 10-20% less. The slices are then encoded by a float32 copy of the kept
    # weights, as the predictor runs them.
    precision: Literal["float32", "bfloat16"] = "float32"
    # Positive slices added to each epoch from phantoms generated for it, never seen before,
    # each with a negative slice of its own phantom, most near its level; 0 adds none.
    # Every epoch otherwise shows the same positives of the training fold, and the CNN
    # learns those slices rather than emboli (model/training/fresh.py). The phantoms are
    # generated before the CNN trains: about a second of one core per positive phantom,
    # which gives about 12 positive slices.
    fresh_positives: int = Field(default=0, ge=0)
    # The generator's difficulty for those phantoms.
    fresh_difficulty: Literal["easy", "realistic", "hard"] = "realistic"
    # The optional first epoch with the backbone frozen, then fine-tuning at a lower rate.
    frozen_backbone_epochs: int = Field(default=0, ge=0)
    finetune_learning_rate: float = Field(default=1e-5, gt=0)
    finetune_lr_decay: float = Field(default=0.003, ge=0)


class SequenceSection(_Section):
    """Stage 3: the BiLSTM sequence model."""

    batch_size: int = Field(default=16, ge=1)
    epochs: int = Field(default=12, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)


class TrainingConfig(_Section):
    """The whole training configuration."""

    name: str = "ctpa-pe"
    version: str = "1"
    # Free text for the bundle's manifest: the data it was trained on, intended use.
    description: str = ""
    seed: int = 0
    folds: int = Field(default=5, ge=2)
    # "ensemble": every fold's models in the bundle; "best": the fold with the lowest
    # validation loss of its sequence model.
    bundle_models: Literal["ensemble", "best"] = "ensemble"
    # Train only the first N folds (a reduced schedule for CPU demos); null trains all.
    # Out-of-fold figures, thresholds and the calibrator then come from those folds'
    # validation series only, and the reports say so.
    train_folds: int | None = Field(default=None, ge=1)
    # Calibrator fitted on the out-of-fold predictions and applied by the predictor:
    # "platt" (logistic on the logit), "isotonic", or "none".
    calibration: Literal["platt", "isotonic", "none"] = "platt"
    precision: Literal["float32", "bfloat16"] = "float32"
    preprocess: PreprocessSection = Field(default_factory=PreprocessSection)
    network: NetworkSection = Field(default_factory=NetworkSection)
    slice_cnn: SliceCNNSection = Field(default_factory=SliceCNNSection)
    sequence: SequenceSection = Field(default_factory=SequenceSection)


def load_training_config(path: Path | None) -> TrainingConfig:
    """Read ``training.yaml``; None gives the paper's defaults.

    Raises
    ------
    ValueError
        With every problem, each with its key path.
    """
    if path is None:
        return TrainingConfig()
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    try:
        return TrainingConfig.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            reason = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"{key}: {reason}")
        raise ValueError(f"{path}: " + "; ".join(problems)) from err
