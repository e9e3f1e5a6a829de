"""`fgssl ledger PATH`: a privacy ledger's history (a node's state directory, a data set's ledger, or a ledger file):
one row per entry with the cumulative ε after it, per run and over the ledger's lifetime, at the ledger's δ."""

from __future__ import annotations

import argparse
import json

from cli.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="a node's --state-dir, a data set's ledger "
                                                "(<cache folder>/privacy-ledgers/images-*.sqlite3) or a ledger file")
    p.add_argument("--json", action="store_true", help="print the history as one JSON object")
    p.add_argument("--csv", metavar="FILE", help="also write one row per entry to FILE")
    p.add_argument("--plot", metavar="FILE", help="also draw the cumulative ε over time into FILE (e.g. .png)")


def run(args: argparse.Namespace) -> int:
    from fgssl.privacy.history import read_history, render_text, save_plot, to_json, write_csv
    from fgssl.privacy.ledger import LedgerError

    try:
        history = read_history(args.path)
    except LedgerError as e:
        raise UserError(str(e)) from None
    written = []
    for option, write in (("--csv", write_csv), ("--plot", save_plot)):
        target = getattr(args, option[2:])
        if target:
            try:
                written.append(str(write(history, target)))
            except (OSError, ValueError) as e:
                raise UserError(f"{option} {target}: cannot write it ({e})") from None
    if args.json:
        print(json.dumps(to_json(history), ensure_ascii=False))
    else:
        print(render_text(history))
        for path in written:
            print(f"fgssl ledger: wrote {path}")
    return 0
