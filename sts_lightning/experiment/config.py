"""The experiment's settings: one dataclass per stage, a docstring under every field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sts_lightning.config import (
    at_least,
    check_fields,
    non_negative_int,
    one_of,
    positive,
    positive_int,
)
from sts_lightning.experiment.task_learning import LearnedMargin
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.model.precision import PRECISIONS
from sts_lightning.model.sae_training import SAETrainConfig
from sts_lightning.training.lora import LoraConfig

__all__ = ["EvalConfig", "ExperimentConfig", "FinetuneConfig", "FirstOrderConfig", "task_name"]
__all__ += ["wandb_logger_kwargs"]


@dataclass
class FinetuneConfig:
    """How each (source task, seed) model is fine-tuned (``SFTModule`` or ``GRPOModule``)."""

    method: Literal["sft", "grpo"] = "sft"
    """``sft``: answer-only NLL (:class:`~sts_lightning.training.sft.SFTModule`); ``grpo``:
    group-relative policy optimisation with the task's checker as reward
    (:class:`~sts_lightning.training.grpo.GRPOModule`)."""
    steps: int = 40
    """Optimizer steps (every task's budget unless ``task_steps`` names it)."""
    task_steps: dict[str, int] = field(default_factory=dict)
    """Per-task step budgets ``{task: steps}`` (a task's name as in ``tasks``; a file task by
    its stem), for tasks that need fewer or more steps than ``steps``."""
    stop_when_learned: bool = False
    """Stop a fine-tune at the first check (every ``check_every`` steps) where the learned rule
    (``learned_margin``) holds on a *stop probe*: ``stop_items`` problems of the task disjoint
    from training and from the problems the run is judged on, so the judgement stays
    unbiased. The step budget caps the run; the report gives each run's steps."""
    check_every: int = 10
    """Optimizer steps between stop-probe checks (``stop_when_learned``)."""
    stop_items: int = 32
    """Problems in each task's stop probe (``stop_when_learned``)."""
    batch_size: int = 32
    """Examples per step (SFT) or prompts per step (GRPO)."""
    accumulate: int = 1
    """Micro-batches accumulated per optimizer step (``batch_size`` is the micro-batch)."""
    lr: float = 1e-4
    """Peak learning rate."""
    precision: str = "auto"
    """Lightning precision of fine-tuning: ``auto`` (bf16 autocast where the GPU or CPU has
    native bf16, as :func:`~sts_lightning.model.precision.native_bf16` reports; fp32
    otherwise), ``bf16-mixed`` or ``32-true`` to force either."""
    max_length: int = 512
    """SFT only: sequences are cut to this many tokens."""
    group_by_length: bool = True
    """SFT only: batches of similar lengths (little padding work), seeded and shuffled as
    transformers' ``group_by_length``; ``false``: uniformly shuffled batches."""
    gradient_checkpointing: bool = False
    """SFT only: recompute activations in the backward pass (long sequences, big models)."""
    micro_batch_size: int | None = None
    """SFT only: rows per forward and backward inside a batch (``SFTModule.micro_batch_size``):
    less activation memory, the same gradient (the batch's token mean); ``None``: the whole
    batch at once."""
    warmup_steps: int = 4
    """Linear warm-up steps."""
    lora: LoraConfig | None = None
    """A LoRA adapter instead of full fine-tuning; ``None``: full fine-tuning (tied embedding
    frozen)."""
    num_generations: int = 4
    """GRPO only: completions sampled per prompt."""
    max_completion_length: int = 16
    """GRPO only: new tokens per completion."""
    track_every: int = 10
    """The STS callback measures the realised shift every this many steps (and at the end)."""
    learned_margin: LearnedMargin | None = field(default_factory=LearnedMargin)
    """When a run counts as having learned its source task (held-out answer NLL and exact
    match, :mod:`~sts_lightning.experiment.task_learning`); runs that did not are left out of
    the primary correlations and reported apart. ``None``: no rule, every run is analysed
    (the task metrics are still reported)."""

    def steps_for(self, task: str) -> int:
        """The step budget of ``task``: its ``task_steps`` entry, else ``steps``."""
        return self.task_steps.get(task, self.steps)

    def __post_init__(self) -> None:
        one_of("finetune.method", self.method, ("sft", "grpo"))
        one_of("finetune.precision", self.precision, PRECISIONS)
        check_fields(self, positive_int, "steps", "batch_size", "num_generations")
        check_fields(self, positive_int, "max_completion_length", "track_every", "accumulate")
        check_fields(self, positive_int, "check_every", "stop_items")
        if not isinstance(self.task_steps, Mapping):
            raise ValueError(
                f"`finetune.task_steps` must map task names to steps, got {self.task_steps!r}"
            )
        for task, steps in self.task_steps.items():
            positive_int(f"finetune.task_steps[{task!r}]", steps)
        if self.stop_when_learned and self.learned_margin is None:
            raise ValueError(
                "`finetune.stop_when_learned` needs a rule: set `finetune.learned_margin`"
            )
        positive_int("max_length", self.max_length)
        if self.micro_batch_size is not None:
            positive_int("finetune.micro_batch_size", self.micro_batch_size)
        positive("finetune.lr", self.lr)
        non_negative_int("finetune.warmup_steps", self.warmup_steps)


@dataclass
class FirstOrderConfig:
    """The ``first_order`` control: ``−η · g_domain · g_train`` from answer-NLL gradients before
    training (:mod:`~sts_lightning.experiment.first_order`), a forecast beside STS."""

    parameters: str = "last_layer"
    """Whose gradients: ``last_layer`` (the last decoder layer) or ``lora`` (a LoRA model's
    adapters)."""
    dim: int | None = 4096
    """Random-projection dimension of every gradient (LESS-style); ``None``: exact."""
    kind: Literal["sketch", "rademacher", "gaussian"] = "sketch"
    """The projection: a count sketch (O(n)) or a dense ±1 / Gaussian matrix (O(n·dim))."""
    domain_items: int = 32
    """Forecast ("score") items per domain whose mean gradient is taken (two halves too)."""
    train_items: int = 64
    """Training examples per (task, seed) whose mean gradient is taken (seeded subset)."""
    batch_size: int = 8
    """Sequences per forward/backward pass."""
    seed: int = 0
    """Seed of the projection and of the domains' item halves."""

    def __post_init__(self) -> None:
        one_of("first_order.parameters", self.parameters, ("last_layer", "lora"))
        one_of("first_order.kind", self.kind, ("sketch", "rademacher", "gaussian"))
        check_fields(self, positive_int, "domain_items", "train_items", "batch_size")
        at_least("first_order.domain_items", self.domain_items, 2)
        if self.dim is not None:
            positive_int("first_order.dim", self.dim)


@dataclass
class EvalConfig:
    """How the realised change of each domain is measured (held-out items only)."""

    metric: Literal["choice_margin", "answer_nll", "item_nll"] = "choice_margin"
    """The pre-registered primary realised change of a domain, paired by item (> 0: worse).
    ``choice_margin``: drop of the mean log-odds of the correct option against the others,
    ``logp(correct) − logsumexp(logp(others))`` (a uniform shift of every option's likelihood
    cancels; MMLU options scored by letter, code's canonical solution against a mutated one);
    ``answer_nll``: change of the correct answer's NLL per answer token; ``item_nll``: change of
    the whole item's NLL per content token (with ``format: chat``: the former whole-item chat
    loss, now without template tokens and with the letter as the answer).
    Every run reports all three (:mod:`sts_lightning.monitor.answer_scores`)."""
    format: Literal["plain", "chat"] = "plain"
    """How held-out items are shown: ``plain`` (question, options and answer as raw text after
    BOS) or ``chat`` (a user turn and the assistant's answer through the chat template, with
    its default system prompt). Template tokens are never scored."""
    items_per_domain: int = 40
    """Held-out items per domain (fewer when a domain's held-out half is smaller)."""
    item_nll: bool = False
    """Also measure every fine-tuned model's whole-item NLL (a secondary metric in
    ``results.json``): logits at every content token, on long items most of a pass's time and
    memory. Always measured for the base model (the base-loss control) and with
    ``metric: item_nll``."""
    rotate_options: bool = False
    """Also score each listed item (MMLU) with its options rotated, so that every option sits
    under every letter once, and average each option's log-prob over the rotations
    (:func:`~sts_lightning.monitor.answer_scores.average_rotations`): a preference for a letter,
    which a fine-tune can move in every domain alike, then cancels from ``choice_margin``
    (and from accuracy and answer NLL). Costs K forwards per K-option item instead of one."""
    vary_items: bool = True
    """Each seed draws its own held-out items (seeded by the run's seed; one base-model pass
    per seed); ``false``: every run is measured on the items of seed 0 (one base pass)."""
    max_length: int = 512
    """Longer held-out sequences are cut from the left (the answer is kept)."""
    task_items: int = 64
    """Held-out problems of each source task whose answer NLL and exact match are compared
    before/after (did fine-tuning learn the task? ``finetune.learned_margin``); 0 skips it and
    no run counts as learned."""
    batch_size: int = 8
    """Sequences per forward pass."""
    precision: str = "auto"
    """Precision of the held-out scoring forwards (items and task problems, before and after):
    ``auto``, ``bf16-mixed`` or ``32-true``, as ``finetune.precision``. The SAE encodes their
    rows in fp32 either way."""
    target_reliability: float = 0.8
    """The split-half reliability of the realised |Δ| across domains this run needs to tell
    (pre-registered): a run below it says so at the top of its report."""

    def __post_init__(self) -> None:
        check_fields(self, positive_int, "items_per_domain", "batch_size")
        if not 0.0 < self.target_reliability <= 1.0:
            raise ValueError(
                "`evaluation.target_reliability` must be in (0, 1], got "
                f"{self.target_reliability!r}"
            )
        non_negative_int("evaluation.task_items", self.task_items)
        one_of("evaluation.metric", self.metric, ("choice_margin", "answer_nll", "item_nll"))
        one_of("evaluation.format", self.format, ("plain", "chat"))
        one_of("evaluation.precision", self.precision, PRECISIONS)
        positive_int("evaluation.max_length", self.max_length)
        at_least("evaluation.max_length", self.max_length, 16)


@dataclass
class ExperimentConfig:
    """Forecast → fine-tune → realised deltas → correlations, for several source tasks and seeds.

    Domains and metrics are fixed here, before any outcome is seen: pre-registration.
    """

    model: str = "embedded:smollm2"
    """HF model id, local checkpoint directory, or ``embedded:smollm2`` (offline default)."""
    dtype: str = "float32"
    """Dtype of the model's forward passes."""
    device: str = "auto"
    """Where the base and fine-tuned models and the SAE run for forecasts and evaluation:
    ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``, …"""
    trust_remote_code: bool = False
    """Allow a hub model's own code to run. Off unless you trust the checkpoint."""
    sae: str | None = None
    """sae-lens id ``release/sae_id`` or a local directory; ``None`` trains one (cached) on the
    model's residual stream at ``predict.layer``, as ``sts-lightning predict`` does."""
    sae_training: SAETrainConfig = field(default_factory=SAETrainConfig)
    """How the SAE is trained when ``sae`` is ``None``."""
    sae_tokens: int = 100_000
    """Residual rows collected to train the SAE."""
    tasks: list[str] = field(default_factory=lambda: ["arithmetic", "family"])
    """Source tasks (≥ 2 for the cross-task comparison): built-in training sets
    (``arithmetic``, ``family``, ``syllogism``, ``mmlu_qa``), ``.jsonl`` files or
    ``datasets`` names / files (e.g. ``GAIR/LIMO``) of prompt/answer pairs."""
    prompt_column: str = "prompt"
    """Prompt column of file / ``datasets`` source tasks (e.g. ``question`` for LIMO)."""
    answer_column: str = "answer"
    """Answer column of file / ``datasets`` source tasks (e.g. ``solution`` for LIMO)."""
    task_examples: int = 2048
    """Examples drawn from each built-in source task (fine-tuning and forecast use this pool)."""
    domains: list[str] = field(
        default_factory=lambda: ["math", "physics", "law", "history", "health", "code"]
    )
    """Built-in domains: scored on their "score" half, measured on their "heldout" half."""
    near_far: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Pre-registered positive control ``{"near": {task: [domains]}, "far": {task: [domains]}}``:
    each task's *near* domains (the same skill through another generator or format) and *far*
    ones (:class:`~sts_lightning.experiment.near_far.NearFarLabels`); a forecast that does not
    put a task's near domains above its far ones fails it. Empty: no such control."""
    domain_files: dict[str, str] = field(default_factory=dict)
    """Extra domains ``{name: .jsonl}``: first half scored, second half held out."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One fine-tune per (task, seed); the seed picks the demonstrations, the fine-tuning
    subset and its order."""
    predict: PredictConfig = field(default_factory=PredictConfig)
    """The forecast (the paper's definitions; ``predict.seed`` is replaced by each seed)."""
    raw_k: int = 100
    """Size of the shifted set in the raw residual-neuron baseline (≤ d_model)."""
    contrast_task: str | None = "syllogism"
    """Source of *unrelated* demonstrations for the task-specific ICL shift
    (Δ_task − Δ_unrelated on the same query tokens); ``None`` skips it. Must not be a source
    task."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Fine-tuning of each (task, seed)."""
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    """Realised-change measurement."""
    first_order: FirstOrderConfig | None = None
    """The first-order gradient control (``first_order`` in every table); ``None``: skipped."""
    n_bootstrap: int = 2000
    """Bootstrap resamples of every Pearson CI."""
    output_dir: str = "runs/experiment"
    """Where ``report.md``, the figures, ``results.json`` and the W&B run are written."""
    cache_dir: str | None = None
    """Cache of the rebuilt embedded model and trained SAEs."""
    wandb: bool = True
    """Log to W&B: every fine-tuning run (its losses and the STS callback's metrics) and the
    report (its tables and figures) are runs of one group; ``false``: no W&B at all."""
    wandb_project: str = "sts-lightning"
    """W&B project of the runs."""
    wandb_entity: str | None = None
    """W&B entity (user or team); ``None``: your default entity."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """``offline``: runs are written under ``output_dir`` (``wandb sync`` them later; no network,
    no API key); ``online``: streamed to W&B as they run."""
    wandb_group: str | None = None
    """W&B group of this experiment's runs; ``None``: the name of ``output_dir``."""
    wandb_tags: list[str] = field(default_factory=list)
    """W&B tags of every run of the experiment."""

    def labels(self):
        """The ``near_far`` labels as :class:`~sts_lightning.experiment.near_far.NearFarLabels`
        (checked against the tasks and domains), or ``None``."""
        return _labels(self)

    def __post_init__(self) -> None:
        if len(self.tasks) < 1 or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"`tasks` must name one or more distinct tasks, got {self.tasks!r}")
        from sts_lightning.data.domains import DOMAINS
        from sts_lightning.data.skills import SKILLS

        unknown = [d for d in self.domains if d not in DOMAINS and d not in SKILLS]
        if unknown:
            raise ValueError(
                f"`domains` entries {unknown} are not built-in domains; use names from "
                f"{list(DOMAINS)}, panel skills from {list(SKILLS)} (or `domain_files` for "
                "your own)"
            )
        skills = [d for d in self.domains if d in SKILLS]
        if skills and self.evaluation.metric == "choice_margin":
            raise ValueError(
                f"`domains` {skills} are panel skills, measured by the answer's NLL (they have "
                "no options): set `evaluation.metric: answer_nll`"
            )
        n_domains = len(self.domains) + len(self.domain_files)
        if n_domains < 3:
            raise ValueError(
                f"`domains` + `domain_files` must name at least 3 domains to correlate, "
                f"got {n_domains}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` must be distinct ints, at least one, got {self.seeds!r}")
        _check_reserved_domains(self.tasks, self.domains)
        names = {task_name(t) for t in self.tasks}
        unknown = [t for t in self.finetune.task_steps if t not in names]
        if unknown:
            raise ValueError(
                f"`finetune.task_steps` names {unknown}, which are not tasks of this experiment "
                f"{sorted(names)}"
            )
        if self.contrast_task is not None and self.contrast_task in self.tasks:
            raise ValueError(
                f"`contrast_task`={self.contrast_task!r} is a source task; the contrast needs "
                "demonstrations unrelated to every source task"
            )
        check_fields(self, positive_int, "sae_tokens", "task_examples", "raw_k", "n_bootstrap")
        self.labels()  # near/far labels name known tasks and domains
        one_of("wandb_mode", self.wandb_mode, ("offline", "online"))
        if not isinstance(self.wandb_project, str) or not self.wandb_project.strip():
            raise ValueError(
                f"`wandb_project` must be a non-empty name, got {self.wandb_project!r}"
            )


def _labels(job: ExperimentConfig):
    from sts_lightning.experiment.near_far import NearFarLabels

    if not job.near_far:
        return None
    if set(job.near_far) != {"near", "far"}:
        raise ValueError(
            f"`near_far` must have the keys 'near' and 'far', got {sorted(job.near_far)}"
        )
    names = {task_name(t) for t in job.tasks}
    labelled = set(job.near_far["near"]) | set(job.near_far["far"])
    if unknown := sorted(labelled - names):
        raise ValueError(f"`near_far` labels {unknown}, which are not tasks {sorted(names)}")
    domains = [*job.domains, *job.domain_files]
    return NearFarLabels(job.near_far["near"], job.near_far["far"], domains)


def task_name(task: str) -> str:
    """A task's name in tables and ``task_steps``: built-in name, file stem or dataset name."""
    path = Path(task)
    return path.stem if path.suffix else task.rstrip("/").rsplit("/", 1)[-1]


def _check_reserved_domains(tasks: list[str], domains: list[str]) -> None:
    """``mmlu_qa`` trains on the MMLU items of its reserved domains: they cannot be scored."""
    from sts_lightning.data.mmlu_qa import MMLU_QA_DOMAINS

    clash = [d for d in domains if d in MMLU_QA_DOMAINS]
    if "mmlu_qa" in tasks and clash:
        raise ValueError(
            f"`domains` entries {clash} hold the items source task 'mmlu_qa' trains on; "
            f"leave them out (reserved for it: {list(MMLU_QA_DOMAINS)})"
        )


def wandb_logger_kwargs(settings: Mapping[str, Any], name: str, save_dir: str) -> dict[str, Any]:
    """``WandbLogger`` keyword arguments for one run of an experiment.

    Args:
        settings: The experiment's fields (``vars(config)``, or ``asdict`` as saved in results).
        name: The run's name (``"arithmetic-seed0"``, ``"report"``).
        save_dir: Where the run's files go.

    Example:
        >>> kw = wandb_logger_kwargs(vars(ExperimentConfig(output_dir="runs/a")), "report", ".")
        >>> kw["project"], kw["group"], kw["offline"], kw["tags"]
        ('sts-lightning', 'a', True, [])
    """
    return dict(
        project=settings["wandb_project"],
        entity=settings["wandb_entity"],
        group=settings["wandb_group"] or Path(settings["output_dir"]).name,
        tags=list(settings["wandb_tags"]),
        name=name,
        save_dir=save_dir,
        offline=settings["wandb_mode"] == "offline",
    )
