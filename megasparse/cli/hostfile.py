"""Write a DeepSpeed hostfile (``host slots=N`` per line) from a SLURM node list."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Optional

from megasparse.cli.common import command_parser

EPILOG = """examples:
  # inside an sbatch script: one line per node of the job, 8 slots each
  megasparse hostfile --slots 8 --output hostfile
  deepspeed --hostfile hostfile --module megasparse.train --config C.yaml

  # from an explicit SLURM node list, slots from SLURM_NTASKS_PER_NODE
  megasparse hostfile --nodelist 'gpu[01-03,07]' --output hostfile

The node list defaults to SLURM_JOB_NODELIST; the slots per node to --slots, else
SLURM_NTASKS_PER_NODE, else SLURM_GPUS_ON_NODE. Bracket ranges keep their zero padding
(gpu[08-10] -> gpu08 gpu09 gpu10), as SLURM names the nodes.
"""

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_nodelist(nodelist: str) -> list[str]:
    """``a[1-2,5],b3`` -> ``[a1, a2, a5, b3]``, the way ``scontrol show hostnames`` expands it."""
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        hosts += _expand_item(item, nodelist)
    if not hosts:
        raise ValueError(f"node list '{nodelist}' names no host")
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Splits on the commas that are outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise ValueError(f"node list '{text}': unbalanced brackets")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"node list '{text}': unbalanced brackets")
    items.append(text[start:])
    return [item for item in items if item]


def _expand_item(item: str, whole: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if match is None:
        return [item]
    head, tail = item[: match.start()], item[match.end() :]
    out = []
    for part in match.group(1).split(","):
        bounds = _RANGE.match(part)
        if bounds is None:
            raise ValueError(f"node list '{whole}': '{part}' is not a number or a range a-b")
        lo, hi = bounds.group(1), bounds.group(2) or bounds.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"node list '{whole}': range {part} runs backwards")
        width = len(lo)
        # The rest of the item may hold more brackets (rack[1-2]-node[1-4]).
        out += [h for n in range(int(lo), int(hi) + 1) for h in _expand_item(f"{head}{n:0{width}d}{tail}", whole)]
    return out


def slots_from_environment() -> Optional[int]:
    """SLURM_NTASKS_PER_NODE ("2" or "2(x3)"), else SLURM_GPUS_ON_NODE."""
    for name in ("SLURM_NTASKS_PER_NODE", "SLURM_GPUS_ON_NODE"):
        match = re.match(r"^(\d+)", os.environ.get(name, ""))
        if match:
            return int(match.group(1))
    return None


def hostfile_text(hosts: list[str], slots: int) -> str:
    return "".join(f"{host} slots={slots}\n" for host in hosts)


def main(argv: Optional[list[str]] = None, prog: str = "megasparse hostfile") -> int:
    parser = command_parser(prog, __doc__, EPILOG)
    parser.add_argument("--nodelist", help="SLURM node list, e.g. 'node[1-4]' (default: $SLURM_JOB_NODELIST)")
    parser.add_argument("--slots", type=int, help="processes (GPUs) per node (default: from SLURM, see below)")
    parser.add_argument("--output", "-o", metavar="PATH", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    nodelist = args.nodelist or os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        print(f"{prog}: error: no node list: pass --nodelist or run inside a SLURM job", file=sys.stderr)
        return 2
    slots = args.slots if args.slots is not None else slots_from_environment()
    if slots is None or slots < 1:
        got = "none found in SLURM_NTASKS_PER_NODE / SLURM_GPUS_ON_NODE" if slots is None else f"got {slots}"
        print(f"{prog}: error: slots per node: {got}; pass --slots N (N ≥ 1)", file=sys.stderr)
        return 2
    try:
        text = hostfile_text(expand_nodelist(nodelist), slots)
    except ValueError as exc:
        print(f"{prog}: error: {exc}; pass a SLURM node list such as 'node[1-4]'", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text)
    except OSError as exc:
        print(
            f"{prog}: error: {args.output}: cannot write the hostfile ({exc.strerror}); pick a writable path",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
