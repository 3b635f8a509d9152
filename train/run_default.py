"""``make train``: fetch and verify MNIST, fit ``configs/default.yaml``, test the best checkpoint.

``python -m train.run_default [--config CONFIG] [extra LightningCLI args]``; the last line printed
is ``Test accuracy: 0.xxxx`` (after the privacy statement for a DP config: ``make train-dp`` runs
``--config configs/dp.yaml``). Extra arguments go to ``python -m train.mnist fit`` (for example
``--trainer.max_epochs 1`` or ``--ckpt_path <run>/checkpoints/last.ckpt`` to resume).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from train.data import default_data_root, prepare_mnist, raw_folder, verify_mnist
from train.mnist import cli_main

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the default experiment end to end."""
    extra = list(sys.argv[1:] if argv is None else argv)
    config = str(DEFAULT_CONFIG)
    if extra[:1] == ["--config"] and len(extra) > 1:  # another experiment in place of the default one
        config, extra = extra[1], extra[2:]
    root = prepare_mnist(default_data_root())
    verify_mnist(root)
    print(f"MNIST verified (SHA-256) in {raw_folder(root)}", flush=True)
    cli_main(["fit", "--config", config, *extra])


if __name__ == "__main__":
    main()
