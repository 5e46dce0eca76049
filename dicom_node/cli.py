"""``dicom-node``: the only entry point, and the only place that reads environment variables.

    dicom-node serve        --config FILE   listener + completion sweep (+ a worker process)
    dicom-node worker       --config FILE   claim jobs, segment, write, send
    dicom-node echo DEST    --config FILE   C-ECHO a configured destination
    dicom-node send PATH DEST --config FILE send a file or a folder of files (recorded as deliveries)
    dicom-node jobs         --config FILE   recent jobs with status, stage, deliveries and error
    dicom-node deliveries [--job JOB] [--state S] --config FILE  each delivery, its attempts, next try, error
    dicom-node retry JOB|--failed --config FILE  queue dead deliveries and failed jobs again
    dicom-node housekeeping [--dry-run] --config FILE  retention and emergency clean-up once now
    dicom-node check-config --config FILE   validate the config (models included) and say what it means
    dicom-node config-schema                JSON Schema of the config file (docs/configuration.md)
    dicom-node write --ct DIR --labels FILE --structures JSON --out DIR [--seg] [--rtstruct] --config FILE
                                            DICOM-SEG/RTSTRUCT from a label map made elsewhere
    dicom-node web | users ... | config export|import   the admin side (dicom_node.admin_cli)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from dicom_node import __version__, admin_cli, cli_deliveries
from dicom_node.association_report import cmd_associations
from dicom_node.cli_deliveries import destination_named
from dicom_node.errors import DicomNodeError
from dicom_node.settings import NodeSettings, Settings, config_json_schema, load_settings
from dicom_node.settings.problems import Problem, config_error
from segmenter.core.errors import SegmenterError

log = logging.getLogger("dicom_node.cli")

CONFIG_ENV = "DICOM_NODE_CONFIG"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pynetdicom", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # highdicom/pydicom held to WARNING unless -v, warnings into the log, quoted header values redacted
    from dicom_node.logging_setup import configure_third_party_logging

    configure_third_party_logging(verbose)


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _unknown_models(settings: Settings) -> list[Problem]:
    """Every rule whose model is not registered (the registry reads the models folder: not done at load)."""
    from segmenter.registry import known_ids  # imported here: check-config should be quick otherwise

    known = known_ids(settings.models.dir)
    return [Problem(f"routing.rules[{index}].model", f"unknown model {rule.model!r} (rule {rule.name!r}); "
                                                     f"known models: {', '.join(known)}")
            for index, rule in enumerate(settings.rules)
            if rule.model.split(":", 1)[0] not in known]  # a multi-head model may name heads: id:head1+head2


def _unmapped_sources(settings: Settings) -> list[Problem]:
    """Every template map source that a rule naming the template sends through a model that cannot produce it."""
    from segmenter.registry import structure_names

    problems = []
    for index, rule in enumerate(settings.rules):
        template = settings.templates.get(rule.template) if rule.template else None
        produced = structure_names(rule.model, settings.models.dir) if template and template.map else None
        if template is None or produced is None:
            continue
        for source in template.map:
            if source not in produced:
                problems.append(Problem(f"routing.rules[{index}].template",
                                        f"template {template.name!r} maps {source!r}, which model {rule.model!r} "
                                        f"(rule {rule.name!r}) does not produce"))
    return problems


def cmd_check_config(settings: Settings, _args: argparse.Namespace) -> int:
    # everything is checked before anything is printed: OK means the whole config, models included
    unknown = _unknown_models(settings)
    unknown += [] if unknown else _unmapped_sources(settings)
    if unknown:
        raise config_error(unknown, settings.source)
    node, models = settings.node, settings.models
    _out(f"config {settings.source}: OK")
    _out(f"  listen      {node.ae_title} on {_ports(node)}"
         + (f", calling AEs allowed: {', '.join(node.allowed_calling_aes)}" if node.allowed_calling_aes else
            ", any calling AE"))
    _out(f"  storage     {node.storage_dir}")
    _out(f"  database    {node.database_url.split('@')[-1]}")
    c = settings.completion
    _out(f"  completion  quiet {c.quiet_seconds:g} s (fallback), settle {c.settle_seconds:g} s, "
         f"after release {c.after_release_seconds:g} s")
    if node.tls.enabled:
        _out(f"  tls         certificate {node.tls.cert_file}, at least TLS {node.tls.min_version}, "
             + (f"client certificates required (CA {node.tls.ca_file})" if node.tls.require_client_cert else
                "no client certificate required"))
    for dest in settings.destinations.values():
        tls = dest.tls
        _out(f"  destination {dest.name}: {dest.ae_title}@{dest.host}:{dest.port}"
             + (f" with TLS (CA {tls.ca_file or 'of the system'}"
                + (", host name checked" if tls.check_hostname else ", host name NOT checked")
                + (f", client certificate {tls.cert_file})" if tls.cert_file else ")") if tls.enabled else ""))
    for rule in settings.rules:
        match = ", ".join(f"{k}={v}" for k, v in rule.match.items()) or "every CT series"
        _out(f"  rule        {rule.name}: {match} -> model {rule.model} -> {'+'.join(rule.outputs)} -> "
             f"{', '.join(rule.destinations)}")
    _out(f"  models      {models.dir or '(none: built-in only)'} on device {models.device}, "
         f"{models.threads or 'default'} CPU threads, memory budget {models.memory_budget_gb:g} GB")
    for template in settings.templates.values():
        if template.map:
            _out(f"  template    {template.name}: " + ", ".join(f"{k} -> {v}" for k, v in template.map.items()))
    if settings.structures:
        _out(f"  structures  {len(settings.catalogue())} in the catalogue, {len(settings.structures)} of this "
             f"department: {', '.join(settings.structures)}")
    return 0


def cmd_config_schema() -> int:
    """The JSON Schema of the config file, for editors and for checking configs made by other tools."""
    _out(json.dumps(config_json_schema(), indent=2))
    return 0


def cmd_echo(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.send.cstore import echo

    dest = destination_named(settings, args.destination)
    status = echo(dest, settings.node.ae_title)
    _out(f"C-ECHO {dest.name} ({dest.ae_title}@{dest.host}:{dest.port}): status 0x{status:04X}")
    return 0 if status == 0 else 1


def cmd_housekeeping(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.db.engine import open_index
    from dicom_node.housekeeping import run_housekeeping

    report = run_housekeeping(settings, open_index(settings.node.database_url), dry_run=args.dry_run)
    for line in report.lines():
        _out(line)
    return 1 if report.shortfall else 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.db.engine import open_index
    from dicom_node.worker import Worker

    factory = open_index(settings.node.database_url)
    worker = Worker(settings, factory, args.worker_id or socket.gethostname())

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current job, then stopping", signum)
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run_forever()
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.db.engine import open_index
    from dicom_node.db.index import close_dangling_associations
    from dicom_node.receive.ae import start_listener
    from dicom_node.receive.handlers import ReceiverContext
    from dicom_node.receive.storage import InstanceStore
    from dicom_node.receive.tls_listener import start_tls_listener
    from dicom_node.receive.validation import DoorLimits
    from dicom_node.scheduler import start_scheduler
    from dicom_node.supervisor import WorkerSupervisor

    factory = open_index(settings.node.database_url)
    closed = close_dangling_associations(factory)
    if closed:
        log.warning("%d association(s) were open when the listener last stopped", closed)
    store = InstanceStore(settings.node.storage_dir, settings.node.min_free_disk_mb)
    receiver = ReceiverContext(factory=factory, store=store, limits=DoorLimits.of(settings.node))
    node, servers = settings.node, []
    try:
        if node.tls.plain_listener or not node.tls.enabled:
            servers.append(start_listener(node, receiver))
        if node.tls.enabled:
            servers.append(start_tls_listener(node, receiver))
    except DicomNodeError:
        for server in servers:
            server.shutdown()
        receiver.close()
        raise
    scheduler = start_scheduler(settings, factory)
    supervisor: WorkerSupervisor | None = None
    if not args.no_worker:
        # a separate process: a crash or out-of-memory in inference never takes the listener down
        cmd = [sys.executable, "-m", "dicom_node.cli", "worker", "--config", str(settings.source)]
        if args.worker_id:
            cmd += ["--worker-id", args.worker_id]
        supervisor = WorkerSupervisor(cmd)
        supervisor.start()
    stopped = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _out(f"dicom-node {__version__} serving {node.ae_title} on {node.host} {_ports(node)} (Ctrl-C to stop)")
    if supervisor is not None:
        supervisor.run_until(stopped)  # a dead worker is started again, with back-off
    else:
        while not stopped.wait(1.0):
            pass
    for server in servers:
        server.shutdown()
    receiver.close()
    scheduler.shutdown(wait=False)
    if supervisor is not None:
        supervisor.stop()
    return 0


def _ports(node: NodeSettings) -> str:
    """The listening addresses: '0.0.0.0:11112', '0.0.0.0:11112 and TLS 0.0.0.0:2762', 'TLS 0.0.0.0:2762'."""
    ports = [f"{node.host}:{node.port}"] if node.tls.plain_listener or not node.tls.enabled else []
    return " and ".join(ports + ([f"TLS {node.host}:{node.tls.port}"] if node.tls.enabled else []))


def cmd_write(settings: Settings, args: argparse.Namespace) -> int:
    """Label map (any grid) + structures file + CT folder -> seg.dcm / rtstruct.dcm (/ sr.dcm, preview) in OUT_DIR."""
    import json

    from dicom_node.convert import (
        fill_missing_uids,
        resample_labels,
        result_from_labels,
        write_objects,
    )
    from dicom_node.series_io import load_series
    from segmenter.core.catalogue import builtin_mapping, parse_label_mapping
    from segmenter.core.volume import Volume

    ct_dir, labels_path, structures = Path(args.ct), Path(args.labels), str(args.structures)
    if not ct_dir.is_dir():
        raise DicomNodeError(f"--ct {ct_dir}: not a folder")
    model_id, model_version = args.model_id, args.model_version
    if Path(structures).is_file():
        try:
            document = json.loads(Path(structures).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DicomNodeError(f"--structures {structures}: cannot read JSON: {exc}") from exc
        mapping = parse_label_mapping(document, structures, settings.catalogue())
        if isinstance(document, dict):
            model_id = model_id or str(document.get("model_id", "") or "")
            model_version = model_version or str(document.get("model_version", "") or "")
    else:  # a mapping shipped with the segmenter, e.g. "totalsegmentator_total"
        mapping = builtin_mapping(structures)
    # only the QA preview shows CT pixels; the other outputs need the headers and the grid
    series = load_series(sorted(p for p in ct_dir.rglob("*") if p.is_file()), pixels=bool(args.preview))
    series = fill_missing_uids(series, settings.identity.uid_root)
    labels = resample_labels(Volume.read(labels_path), series.volume)
    result = result_from_labels(labels, mapping, model_id or "imported-label-map", model_version or "unknown")
    kinds = [k for k, wanted in (("SEG", args.seg), ("RTSTRUCT", args.rtstruct), ("SR", args.sr),
                                 ("PREVIEW", args.preview)) if wanted]
    if not (args.seg or args.rtstruct):  # --sr/--preview add to the default pair
        kinds = ["SEG", "RTSTRUCT", *kinds]
    # the writer jobs use; no label map or structures file beside the objects (the caller has them)
    for written in write_objects(series, result, kinds, settings.identity, Path(args.out),
                                 catalogue=settings.catalogue()):
        _out(f"{written.kind} {written.path}")
    return 0


COMMANDS = {
    "serve": cmd_serve, "worker": cmd_worker, "echo": cmd_echo, "check-config": cmd_check_config,
    "write": cmd_write, "housekeeping": cmd_housekeeping, **cli_deliveries.COMMANDS, **admin_cli.COMMANDS,
    "associations": cmd_associations,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-node", description="DICOM auto-contouring node")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default=None,
                       help=f"node config TOML (default: ${CONFIG_ENV})")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        return p

    p = add("serve", "run the listener and completion sweep, and a worker process")
    p.add_argument("--no-worker", action="store_true", help="do not start a worker process")
    p.add_argument("--worker-id", default=None, help="id of the worker process (default: host name)")
    p = add("worker", "run a worker that claims and processes jobs")
    p.add_argument("--worker-id", default=None, help="unique per worker on a host (default: host name)")
    p = add("echo", "C-ECHO a configured destination")
    p.add_argument("destination")
    cli_deliveries.add_parsers(add)
    p = add("associations", "list accepted and rejected associations and refused connections, newest first")
    p.add_argument("--rejected", action="store_true", help="only those not accepted")
    p.add_argument("--limit", type=int, default=50)
    add("check-config", "validate the config file, models included")
    p = add("housekeeping", "remove fully delivered instances and outputs past retention (or to free disk) now")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    sub.add_parser("config-schema", help="print the JSON Schema of the config file (needs no config)")
    p = add("write", "write DICOM-SEG and/or RTSTRUCT from a label map on (or resampled to) a CT series")
    p.add_argument("--ct", required=True, help="folder of the CT series the label map was made from")
    p.add_argument("--labels", required=True, help="label map (NIfTI/NRRD/MHA), any grid covering the CT")
    p.add_argument("--structures", required=True,
                   help="JSON mapping label ids to catalogue names, or a built-in mapping (totalsegmentator_total)")
    p.add_argument("--out", required=True, help="output folder (seg.dcm, rtstruct.dcm)")
    p.add_argument("--seg", action="store_true", help="write the DICOM-SEG (default: both)")
    p.add_argument("--rtstruct", action="store_true", help="write the RTSTRUCT (default: both)")
    p.add_argument("--sr", action="store_true",
                   help="also write sr.dcm: DICOM SR (TID 1500) with each structure's volume")
    p.add_argument("--preview", action="store_true",
                   help="also write the QA preview: preview.png and preview.dcm (Secondary Capture)")
    p.add_argument("--model-id", default="", help="algorithm name recorded in the objects")
    p.add_argument("--model-version", default="", help="algorithm version recorded in the objects")
    admin_cli.add_parsers(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config-schema":  # the one command that describes configs instead of reading one
        return cmd_config_schema()
    _setup_logging(args.verbose)
    config = args.config or os.environ.get(CONFIG_ENV)
    if not config:
        sys.stderr.write(f"dicom-node: no config given; use --config FILE or set {CONFIG_ENV}\n")
        return 2
    try:
        settings = load_settings(Path(config))
        return COMMANDS[args.command](settings, args)
    except (DicomNodeError, SegmenterError) as exc:
        sys.stderr.write(f"dicom-node {args.command}: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
