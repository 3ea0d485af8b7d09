"""Head-only training of a distance-aware Chronos head on a frozen Chronos-T5 (issue 10 §4).

``python -m train.distance_head --config configs/distance_head.yaml [--set section.key=value ...]
[--data-dir DIR] [--out DIR] [--base DIR] [--max-steps N]``

* model: :class:`jaxts.models.distance_head.DistanceAwareChronos`: the Chronos-T5 of
  ``distance_head.base`` (an HF Chronos directory / hub id or a jaxts ``chronos_t5`` directory),
  rebuilt with T5 dropout 0 (the Trainer puts the whole model in train mode) and frozen, plus a
  fresh :class:`~jaxts.models.distance_head.DistanceHead` (``hidden_size`` = the base's
  ``d_model``, ``num_bins`` = its ``n_tokens``, dropout on) on the decoder's last hidden state;
* frozen means twice: the base's hidden states pass ``jax.lax.stop_gradient`` inside
  ``DistanceAwareChronos`` (no backward pass through the T5) and the optimizer is ``optax.multi_transform`` with ``set_to_zero`` on every
  ``base`` parameter (no AdamW moments for it, and weight decay never touches it): only the head
  and its temperature change;
* data: ``train.chronos_t5``'s random windows (``load_series``, ``ChronosWindows``: Chronos'
  tokenizer, labels -100 where the future is missing) with the recipe's own lengths;
  ``feeding: shifted`` (the default) gives the decoder the labels shifted right behind PAD, as
  Chronos trains; ``feeding: upstream`` gives it the unshifted labels, as the published run did
  (position t sees its own label: for reproducing that run only);
* loss on the head's logits over the label positions (not -100, not EOS, not a padding row):
  ``combined`` (:func:`jaxts.losses.combined_ordinal_loss`, upstream's), ``gaussian_v2``
  (:func:`jaxts.losses.gaussian_soft_label_loss`) or ``ce`` (token cross-entropy, the control);
* AdamW + global-norm clipping on a per-step schedule (:func:`train.optim.chronos_optimizer`).

Outputs in ``--out``: ``best/`` (a jaxts ``distance_head`` checkpoint: the head and its
temperature only, the base recorded in its ``config.json`` as ``"base"``; load it with
``DistanceAwareChronosPipeline.from_pretrained(base, RUN/best)``), ``metrics.jsonl``,
``metrics.csv``, ``summary.json``, ``config.yaml``. Re-running the same command resumes. See
``docs/distance_head.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train.chronos_t5 import (
    ChronosWindows,
    CsvLog,
    fit_and_summarize,
    load_series,
    print_series,
    windows_main,
    windows_trainer,
)
from train.config import ConfigError, RunConfig, model_section, updated
from train.losses import IGNORE_INDEX, token_cross_entropy

ENTRY = "python -m train.distance_head"
FEEDINGS = ("shifted", "upstream")
LOSSES = ("combined", "gaussian_v2", "ce")


# ---- data ---------------------------------------------------------------------------------------


def upstream_decoder_input(labels: np.ndarray, pad_token_id: int = 0) -> np.ndarray:
    """The published run's decoder input: the labels themselves (unshifted), -100 -> pad."""
    return np.where(labels == IGNORE_INDEX, pad_token_id, labels).astype(np.int32)


class HeadWindows(ChronosWindows):
    """:class:`train.chronos_t5.ChronosWindows` whose decoder input follows ``feeding``:
    ``shifted`` (Chronos': the labels shifted right behind PAD) or ``upstream`` (the labels
    themselves)."""

    def __init__(self, *args, feeding: str = "shifted", **kwargs):
        if feeding not in FEEDINGS:
            raise ValueError(f"feeding must be one of {FEEDINGS}, got {feeding!r}")
        super().__init__(*args, **kwargs)
        self.feeding = feeding

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        ids, mask, dec, labels = super().batch(idx)
        if self.feeding == "upstream":
            dec = upstream_decoder_input(labels, self.config.pad_token_id)
        return ids, mask, dec, labels


def window_config(chronos_config, recipe):
    """The base's tokenizer config with the recipe's window lengths (null: the base's)."""
    return dataclasses.replace(
        chronos_config,
        context_length=recipe.context_length or chronos_config.context_length,
        prediction_length=recipe.prediction_length or chronos_config.prediction_length,
    )


# ---- model and optimizer -------------------------------------------------------------------------


def load_base(path: str):
    """The Chronos-T5 at ``path`` rebuilt with T5 dropout 0 (eval-equivalent under the
    Trainer's train mode), same weights."""
    from flax import nnx

    from jaxts.models.chronos_t5 import ChronosT5
    from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline

    loaded = ChronosT5Pipeline.from_pretrained(path).model
    cfg = loaded.config
    base = ChronosT5(
        dataclasses.replace(cfg, t5=dataclasses.replace(cfg.t5, dropout_rate=0.0)),
        rngs=nnx.Rngs(0),
    )
    nnx.update(base, nnx.state(loaded, nnx.Param))
    return base


def head_config(cfg: RunConfig, base_config):
    """``(DistanceHeadConfig, cfg)``: the head for the base (``hidden_size`` = its ``d_model``,
    ``num_bins`` = its ``n_tokens``) with the fields the model section sets, recorded as the
    model section."""
    from jaxts.models.distance_head import DistanceHeadConfig

    fit = {"hidden_size": base_config.t5.d_model, "num_bins": base_config.chronos.n_tokens}
    given: dict = {}
    if cfg.model is not None:
        if cfg.model.name != "distance_head":
            raise ConfigError(f"{ENTRY} needs model.name: distance_head, got {cfg.model.name!r}")
        given = {k: getattr(cfg.model, k) for k in cfg.model.model_fields_set if k != "name"}
    bad = [f"model.{k} {given[k]} (the base's {v})" for k, v in fit.items() if given.get(k, v) != v]
    if bad:
        raise ConfigError(
            f"{', '.join(bad)} does not fit the base {cfg.distance_head.base}: leave it out of "
            "the model section, it is read from the base"
        )
    head = DistanceHeadConfig.from_dict({**given, **fit})
    return head, updated(cfg, {"model": model_section(head)})


def build_model(cfg: RunConfig):
    """``(model, cfg)``: the frozen base of ``distance_head.base`` plus a fresh head (its
    dropout RNG and init seeded from ``optim.seed``); ``cfg`` records the head's config."""
    from flax import nnx

    from jaxts.models.distance_head import DistanceAwareChronos, DistanceHead

    base = load_base(cfg.distance_head.base)
    head_cfg, cfg = head_config(cfg, base.config)
    seed = cfg.optim.seed
    head = DistanceHead(head_cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    return DistanceAwareChronos(base, head), cfg


def _labels(params):
    """``frozen`` for every parameter of the base, ``train`` for the head's."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if path[0].key == "base" else "train", params
    )


@functools.cache  # equal settings -> the same tx, a jit static: resumes reuse the compile
def head_only_optimizer(lr, total_steps, warmup_steps, schedule, weight_decay, grad_clip):
    """:func:`train.optim.chronos_optimizer` on the head's parameters, zero updates (and no
    optimizer state) for the base's; returns ``(tx, schedule)``."""
    from train.optim import chronos_optimizer

    tx, sched = chronos_optimizer(lr, total_steps, warmup_steps, schedule, weight_decay, grad_clip)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, _labels), sched


# ---- loss ---------------------------------------------------------------------------------------


@functools.cache  # one function object per setting: a jit static of the Trainer's step
def head_loss(kind: str, weights=(0.5, 0.3, 0.2), alpha=1.0, beta=0.1, sigma=2.0, eos_id=1):
    """A Trainer loss ``(model, batch, mask [B]) -> scalar``: ``kind`` (combined, gaussian_v2
    or ce) averaged over the label positions that hold a value (not -100, not EOS: the sampler
    never emits EOS, and an ordinal loss would read its id as the lowest bin) of the valid
    rows."""
    from jaxts.losses import combined_ordinal_loss, gaussian_soft_label_loss

    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")

    def loss(model, batch, mask):
        ids, attention_mask, decoder_input_ids, labels = batch
        # DistanceAwareChronos stops gradients at the base's hidden state: the backward pass
        # never enters the T5
        logits = model(ids, attention_mask, decoder_input_ids)  # [B, L, N]
        valid = (labels != IGNORE_INDEX) & (labels != eos_id) & mask[:, None]  # [B, L]
        targets = jnp.where(valid, labels, 0)  # [B, L]
        if kind == "combined":
            return combined_ordinal_loss(
                logits, targets, mask=valid, weights=weights, alpha=alpha, beta=beta
            )
        if kind == "gaussian_v2":
            return gaussian_soft_label_loss(logits, targets, sigma=sigma, mask=valid)
        return token_cross_entropy(logits, targets, valid)  # ce

    return loss


def export_head(base: str, recipe: dict):
    """The Trainer's ``export_best``: the head and temperature only, as a jaxts
    ``distance_head`` checkpoint recording the base and the recipe."""

    def export(model, directory: Path) -> None:
        from jaxts.checkpoint import save_model

        save_model(model.head, directory, extra={"base": base, "recipe": recipe})

    return export


# ---- the run ------------------------------------------------------------------------------------


class Prepared(NamedTuple):
    """What :func:`prepare` sets up: the Trainer (its ``model`` is the DistanceAwareChronos),
    the resolved config, the ``metrics.csv`` log and what the summary reports."""

    trainer: Any
    cfg: RunConfig
    log: CsvLog
    counts: dict[str, int]
    recipe: dict[str, Any]


def prepare(cfg: RunConfig, *, devices=None, callback=None) -> Prepared:
    """Check the config, load the data and the base, write the run folder's ``config.yaml`` and
    build the Trainer (nothing trained yet)."""
    from train.common import check_sections, n_params, prepare_run_dir

    check_sections(cfg, ENTRY, own="distance_head")
    c = cfg.distance_head
    if c is None or c.base is None:
        raise ConfigError(
            f"{ENTRY} needs distance_head.base (--base): the frozen Chronos-T5, an HF Chronos "
            "dir / hub id or a jaxts chronos_t5 model dir"
        )
    series, counts = load_series(c.datasets, cfg.data.data_dir)
    model, cfg = build_model(cfg)
    wcfg = window_config(model.base.config.chronos, c)
    o = cfg.optim
    total = o.train_epochs * c.steps_per_epoch
    data = HeadWindows(series, wcfg, total * o.batch_size, o.seed, c.min_past, feeding=c.feeding)
    out = prepare_run_dir(cfg)
    print_series(counts, data, series)
    print(
        f"distance head: {n_params(model.head):,} trainable parameters on a frozen Chronos-T5 "
        f"of {n_params(model.base):,} ({c.base}); context {wcfg.context_length}, labels "
        f"{wcfg.prediction_length}; loss {c.loss}, {c.feeding} feeding; {o.train_epochs} x "
        f"{c.steps_per_epoch} steps of {o.batch_size} windows",
        flush=True,
    )
    tx, schedule = head_only_optimizer(o.learning_rate, total, c.warmup_steps, c.schedule,
                                       o.weight_decay, c.grad_clip)  # fmt: skip
    recipe = {"feeding": c.feeding, "loss": c.loss, "context_length": wcfg.context_length,
              "prediction_length": wcfg.prediction_length, "steps": total}  # fmt: skip
    loss = head_loss(c.loss, tuple(c.weights), c.alpha, c.beta, c.sigma, wcfg.eos_token_id)
    trainer, log = windows_trainer(model, loss, data, cfg, c.steps_per_epoch, tx, schedule, out,
                                   devices=devices, callback=callback,
                                   export_best=export_head(c.base, recipe))  # fmt: skip
    return Prepared(trainer, cfg, log, counts, recipe)


def run(cfg: RunConfig, *, max_steps: int | None = None, devices=None, callback=None) -> dict:
    """Train; returns a summary dict (also written to ``out/summary.json``). ``max_steps``
    stops early (resumable), as :meth:`train.trainer.Trainer.fit`."""
    t_start = time.perf_counter()
    p = prepare(cfg, devices=devices, callback=callback)
    return fit_and_summarize(p.trainer, p.log, t_start, max_steps, series=p.counts,
                             batch_size=p.cfg.optim.batch_size, base=p.cfg.distance_head.base,
                             **p.recipe)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return windows_main(
        argv, run, prog=ENTRY,
        description="Train a distance-aware output head on a frozen Chronos-T5 (head and "
        "temperature only).",
        set_example="distance_head.loss=ce", path_flag="--base", path_key="distance_head.base",
        path_help="the frozen Chronos-T5: an HF Chronos or jaxts chronos_t5 dir",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
