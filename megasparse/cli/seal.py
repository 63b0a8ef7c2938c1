"""Add the manifest to checkpoint folders saved before megasparse recorded one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from megasparse.cli.common import command_parser

EPILOG = """examples:
  # every global_stepN folder of a run that has metadata but no manifest
  megasparse seal runs/0.1b-relu/checkpoints
  # one folder
  megasparse seal runs/0.1b-relu/checkpoints/global_step2000

A folder without a manifest counts as incomplete: it is not listed, loaded or resumed from. A
megasparse that kept no manifests wrote such folders too. This command checks what it can (the
metadata, one megasparse_rank{R}.pt per rank of the saved layout, DeepSpeed's model states) and
then records every file's size and checksum. It cannot tell a file cut short by a killed save or
prune from a whole one: seal only folders whose save you know finished (a `latest` naming them,
or a log line "saved checkpoint ...").
"""


def _folders(path: Path) -> list[Path]:
    from megasparse.checkpoint.engine import META_FILE, TAG_PATTERN
    from megasparse.checkpoint.manifest import has_manifest

    if (path / META_FILE).exists() or has_manifest(path):
        return [path]
    found = [c for c in sorted(path.iterdir()) if TAG_PATTERN.match(c.name) and not has_manifest(c)]
    if not found:
        raise ValueError(f"{path}: no global_stepN folder without a manifest here; nothing to seal")
    return found


def unsealable(folder: Path) -> Optional[str]:
    """Why a folder cannot be sealed (one line), or None."""
    from megasparse.checkpoint.engine import META_FILE

    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return f"{meta_path}: missing; the save was interrupted before its metadata, so the folder is incomplete"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{meta_path}: not valid JSON; the folder is damaged"
    world = int(meta.get("layout", {}).get("world_size", 1))
    missing = [f"megasparse_rank{r}.pt" for r in range(world) if not (folder / f"megasparse_rank{r}.pt").is_file()]
    if missing:
        return f"{folder}: {', '.join(missing)} missing (the layout had {world} ranks); the folder is incomplete"
    if not any(p.name.endswith("model_states.pt") for p in folder.iterdir()):
        return f"{folder}: no DeepSpeed model states (*model_states.pt); the folder is incomplete"
    return None


def main(argv: Optional[list[str]] = None, prog: str = "megasparse seal") -> int:
    parser = command_parser(prog, __doc__, EPILOG)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a global_stepN folder or a checkpoint directory")
    args = parser.parse_args(argv)
    from megasparse.checkpoint import manifest

    status = 0
    for given in map(Path, args.paths):
        try:
            folders = _folders(given)
        except (ValueError, FileNotFoundError, NotADirectoryError) as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            status = 2
            continue
        for folder in folders:
            if manifest.has_manifest(folder):
                print(f"{folder}: already sealed")
                continue
            problem = unsealable(folder)
            if problem:
                print(f"{prog}: error: {problem}", file=sys.stderr)
                status = 2
                continue
            names = manifest.files_to_record(folder)
            manifest.write_manifest(folder, manifest.describe_files(folder, names))
            print(f"{folder}: sealed ({len(names)} files)")
    return status


if __name__ == "__main__":
    sys.exit(main())
