"""``sts-lightning fit|validate``: Lightning's CLI over any LightningModule and DataModule.

A recipe (``recipes/sft_*.yaml``, ``recipes/grpo_*.yaml``) names its classes with
``class_path`` / ``init_args``; every key can be overridden on the command line::

    sts-lightning fit --config recipes/sft_arithmetic_smollm2.yaml --trainer.max_steps 3

The resolved configuration is written beside the run (``<log_dir>/config.yaml``), so the run
can be repeated exactly. The modules configure their own optimizers (no ``--optimizer``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

__all__ = ["STSLightningCLI", "build_cli", "parse_config", "run", "safe_loading"]


class STSLightningCLI(LightningCLI):
    """``LightningCLI`` with the ``fit`` and ``validate`` subcommands only."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        every = LightningCLI.subcommands()
        return {name: every[name] for name in ("fit", "validate")}


class _ParseOnlyCLI(STSLightningCLI):
    """Parses and type-checks a configuration, builds nothing."""

    def instantiate_classes(self) -> None:
        pass


def build_cli(
    args: Sequence[str] | None, *, run: bool = True, cli_class: type[LightningCLI] = STSLightningCLI
) -> LightningCLI:
    """Parse ``args``, build the model, data module and trainer, and run the subcommand.

    Args:
        args: Command-line arguments (``["fit", "--config", ...]``; without the subcommand when
            ``run`` is False). ``None``: ``sys.argv[1:]``.
        run: Run the subcommand; False: stop after building (``cli.model``, ``cli.trainer``...).
        cli_class: The CLI class (tests pass a subclass).

    Returns:
        The CLI object.
    """
    with warnings.catch_warnings():
        # It warns whenever `args` is given while sys.argv has arguments: here that is the point.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return cli_class(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,  # any LightningModule: SFTModule, GRPOModule, your own
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},  # re-running into the same log_dir is fine
            auto_configure_optimizers=False,  # the modules configure their own optimizers
            args=None if args is None else list(args),
            run=run,
        )


def parse_config(args: Sequence[str]) -> Any:
    """The parsed, type-checked configuration of ``args`` (no subcommand), building nothing.

    Every ``class_path`` must import and every ``init_args`` key must match its signature, but no
    class is instantiated: nothing is loaded, downloaded or allocated.

    Example:
        >>> cfg = parse_config(
        ...     [
        ...         "--model=sts_lightning.training.sft.SFTModule",
        ...         "--data=sts_lightning.training.data.SFTDataModule",
        ...     ]
        ... )
        >>> cfg.model.class_path, cfg.data.init_args.train
        ('sts_lightning.training.sft.SFTModule', 'arithmetic')
    """
    return build_cli(args, run=False, cli_class=_ParseOnlyCLI).config


def safe_loading(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--weights_only=true`` unless the user chose: Lightning's default
    (``False``) would unpickle whatever ``--ckpt_path`` names.

    Example:
        >>> safe_loading(["fit", "--config", "r.yaml"])
        ['fit', '--config', 'r.yaml', '--weights_only=true']
        >>> safe_loading(["fit", "--weights_only", "false"])
        ['fit', '--weights_only', 'false']
    """
    argv = list(argv)
    if argv[:1] in (["fit"], ["validate"]) and not any(
        a.split("=", 1)[0] == "--weights_only" for a in argv
    ):
        argv.append("--weights_only=true")
    return argv


def run(argv: list[str]) -> int:
    """Entry point of ``sts-lightning fit|validate ...``; returns the exit status."""
    from sts_lightning.forecast.recipe import enable_field_docs

    enable_field_docs()
    build_cli(safe_loading(argv))
    return 0
