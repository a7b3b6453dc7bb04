"""Run spec: the one place where a training command's flags become what the run trains.

    spec = spec_from_args("wikitext", train.parser().parse_args(argv))
    spec.name, spec.data, spec.train.batch_size, spec.model_config(), spec.build()

`train` (WikiText-2) and `train_snli` build their run from it, the grid's preflight checks
and times every run of a grid through it, and the benchmark's training step builds its
model from it, so a flag means the same thing (and fills in the same defaults) everywhere.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from .data.snli import SNLIDataConfig
from .data.wikitext import LMDataConfig
from .models import ModelConfig, build_classifier, build_model, classifier_config, resolve_config
from .runs import dataclass_from_args, paper_batch_size, parse_option, run_name
from .training import HEAD_LOSSES, TrainConfig

# SNLI defaults (the paper: 20 epochs; nothing else stated for the classifiers).
SNLI_DEFAULTS = {"epochs": 20, "batch_size": 32, "lr": 3e-4}
# The paper's DistilBERT heads read premise and hypothesis as 48-token inputs each.
DISTILBERT_SENT_LEN = 48


@dataclass(frozen=True)
class RunSpec:
    """What one training run trains, every default filled in.

    task: "wikitext" (next-token LM) or "snli" (3-way classification).
    model: "transformer" or "grassmann"; preset: a `models.PRESETS` name (None for a DistilBERT head).
    data: the tokenisation and blocking of the corpus; train: the loop's settings, with the
        task's batch size, epochs and learning rate resolved (never left to the loop's defaults).
    options: the model options (flat `ModelConfig` / `MixerConfig` fields) the preset is
        resolved with, n_layers and n_positions included.
    vocab_size: None = the tokenizer's (what the CLIs use); a number for random-token benchmarks.
    snli_mode: "scratch" (an encoder over the pair) or "distilbert" (a head on DistilBERT, `head`).
    """

    task: str
    model: str
    preset: str | None
    n_layers: int
    data: LMDataConfig | SNLIDataConfig
    train: TrainConfig
    options: dict[str, Any] = field(default_factory=dict)
    tag: str = ""
    vocab_size: int | None = None
    snli_mode: str = "scratch"
    pooling: str = "mean"
    head: dict[str, Any] | None = None

    @property
    def seq_len(self) -> int:
        """Tokens per input: the LM block, the SNLI pair, or one sentence of a DistilBERT head."""
        if isinstance(self.data, LMDataConfig):
            return self.data.seq_len
        return self.data.sent_len if self.snli_mode == "distilbert" else self.data.max_len

    @property
    def name(self) -> str:
        """The run directory's name (`runs.run_name`)."""
        if self.snli_mode == "distilbert":
            return run_name(self.model, self.task, None, None, self.train.seed, self.tag, preset=None,
                            lr=self.train.lr, head=(self.head or {}).get("combine"))
        return run_name(self.model, self.task, self.seq_len, self.n_layers, self.train.seed, self.tag,
                        preset=self.preset, lr=self.train.lr)

    def model_options(self) -> dict[str, Any]:
        """`options` with the vocabulary size: the tokenizer's unless `vocab_size` is set."""
        vocab = self.vocab_size
        if vocab is None:
            from .data.tokenizers import load_tokenizer

            vocab = len(load_tokenizer(self.data.tokenizer))
        return {**self.options, "vocab_size": vocab}

    def model_config(self) -> ModelConfig:
        """The resolved, validated `ModelConfig` (from-scratch models); raises ValueError."""
        self._from_scratch()
        resolve = resolve_config if self.task == "wikitext" else classifier_config
        return resolve(self.model, self.preset, **self.model_options())

    def build(self) -> nn.Module:
        """The from-scratch model: a language model, or an SNLI classifier with `pooling`."""
        self._from_scratch()
        if self.task == "wikitext":
            return build_model(self.model, self.preset, **self.model_options())
        return build_classifier(self.model, self.preset, pooling=self.pooling, **self.model_options())

    def _from_scratch(self) -> None:
        if self.snli_mode == "distilbert":
            raise ValueError("a DistilBERT head is built by models/snli_heads.py, not from a preset")


def spec_from_args(task: str, args: argparse.Namespace) -> RunSpec:
    """The `RunSpec` of `train`'s (task "wikitext") or `train_snli`'s (task "snli") parsed flags.

    Raises ValueError for flags that contradict each other or a malformed --opt.
    """
    options: dict[str, Any] = dict(parse_option(o) for o in args.opt)
    if args.mixer_impl:
        options["mixer_impl"] = args.mixer_impl
    common = {"task": task, "model": args.model, "n_layers": args.n_layers, "tag": args.tag}
    if task == "wikitext":
        data = dataclass_from_args(LMDataConfig, args)
        train = dataclass_from_args(TrainConfig, args, batch_size=args.batch_size or paper_batch_size(data.seq_len))
        if train.head_loss not in HEAD_LOSSES:
            raise ValueError(f"--head-loss must be one of {', '.join(HEAD_LOSSES)}; got {train.head_loss!r}")
        options.update(n_layers=args.n_layers, n_positions=args.n_positions or data.seq_len)
        return RunSpec(**common, preset=args.preset, data=data, train=train, options=options)
    train = dataclass_from_args(TrainConfig, args, **{k: v for k, v in SNLI_DEFAULTS.items()
                                                      if getattr(args, k) is None})
    if args.mode == "scratch":
        if args.transformer_head or args.head_opt:
            raise ValueError("--transformer-head and --head-opt configure the DistilBERT heads (--mode distilbert)")
        data = dataclass_from_args(SNLIDataConfig, args, encoding="pair")
        options.update(n_layers=args.n_layers, n_positions=data.max_len)
        return RunSpec(**common, preset=args.preset, data=data, train=train, options=options, pooling=args.pooling)
    if options:
        raise ValueError("--opt and --mixer-impl configure the from-scratch encoders (--mode scratch); "
                         "the DistilBERT heads are set up in models/snli_heads.py")
    if args.model == "grassmann" and args.transformer_head:
        raise ValueError("--transformer-head picks the Transformer head's layout; the Grassmann head "
                         "is always siamese")
    combine = (args.transformer_head or "joint") if args.model == "transformer" else None
    data = dataclass_from_args(SNLIDataConfig, args, encoding=args.encoding, sent_len=DISTILBERT_SENT_LEN,
                               max_len=2 * DISTILBERT_SENT_LEN)
    head = {"head": args.model, "backbone": args.backbone, "finetune_backbone": args.finetune_backbone,
            "encoding": args.encoding, "combine": combine,
            **({"options": dict(parse_option(o) for o in args.head_opt)} if args.head_opt else {})}
    return RunSpec(**common, preset=None, data=data, train=train, snli_mode="distilbert", head=head)
