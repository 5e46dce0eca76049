"""``dicom-node associations``: the association audit as a table, newest first."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicom_node.settings import Settings


def association_lines(database_url: str, rejected_only: bool, limit: int) -> list[str]:
    """A header line and one line per audit row: time (UTC), result, calling and called AE, peer, reason."""
    # imported here: the command line starts without the database layers
    from dicom_node.db import association_audit as audit
    from dicom_node.db.engine import open_index

    factory = open_index(database_url)
    lines = [f"{'time (UTC)':<19}  {'result':<8}  {'calling AE':<16}  {'called AE':<16}  {'peer':<21}  reason"]
    try:
        with factory() as session:
            for row in audit.recent(session, rejected_only, limit):
                lines.append(f"{row.at:%Y-%m-%d %H:%M:%S}  {row.result.value:<8}  {row.calling_ae or '-':<16}  "
                             f"{row.called_ae or '-':<16}  {row.peer_address:<21}  {row.reason or '-'}")
    finally:
        factory.kw["bind"].dispose()
    return lines


def cmd_associations(settings: Settings, args: argparse.Namespace) -> int:
    sys.stdout.write("\n".join(association_lines(settings.node.database_url, args.rejected, args.limit)) + "\n")
    return 0
