"""``megasparse <command> [options]``: one command line for every user task."""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

# command -> (module with main(argv, prog), the tools/ script that does the same, one-line summary)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("megasparse.train", "python -m megasparse.train", "pretrain a model (also under deepspeed/srun/mpirun)"),
    "tokenizer": ("megasparse.cli.tokenizer", "tools/train_tokenizer.py", "train a SentencePiece tokenizer"),
    "preprocess": ("megasparse.cli.preprocess", "tools/preprocess_data.py", "tokenize a corpus into .bin/.idx"),
    "merge": ("megasparse.cli.merge", "tools/merge_datasets.py", "concatenate .bin/.idx datasets"),
    "measure": ("megasparse.cli.measure", "tools/measure_sparsity.py", "measure CETT-PPL-p% and other sparsity"),
    "fit": ("megasparse.cli.fit", "tools/fit_sparsing_law.py", "fit the Sparsing Law to activation curves"),
    "summarize": ("megasparse.cli.summarize", "tools/summarize_runs.py", "table and plot of finished runs"),
    "hostfile": ("megasparse.cli.hostfile", "tools/write_hostfile.py", "DeepSpeed hostfile from a SLURM node list"),
    "inspect": ("megasparse.cli.inspect_data", "tools/inspect_data.py", "documents, token counts, largest id, samples"),
    "convert": ("megasparse.cli.convert", "tools/convert_checkpoint.py", "reshard, consolidate, export checkpoints"),
    "seal": ("megasparse.cli.seal", "tools/seal_checkpoint.py", "add manifests to checkpoints saved without them"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: megasparse <command> [options]    (megasparse <command> --help for each)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}  [{script}]" for name, (_, script, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"megasparse: error: unknown command '{name}'; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"megasparse {name}")


if __name__ == "__main__":
    sys.exit(main())
