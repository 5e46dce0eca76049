"""Notifications end to end with real peers: a local HTTP server receives the signed webhooks, a local SMTP
server (aiosmtpd) the e-mails. Events come from the node's own code paths: a worker whose job fails, a sender
whose delivery goes dead, housekeeping on a full disk, a series that grew after delivery, the review hook."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import cli, notify
from dicom_node.db import index, jobs, review, supersession
from dicom_node.db.engine import open_index
from dicom_node.db.index import InstanceMeta
from dicom_node.db.notification_tables import MessageStatus, NotificationEvent, NotificationMessage
from dicom_node.db.tables import Delivery, Job, JobStatus
from dicom_node.delivery import DeliveryLoop
from dicom_node.housekeeping import run_housekeeping
from dicom_node.notify.outbox import Notifier
from dicom_node.routing import SeriesAttributes, route
from dicom_node.settings import Settings
from dicom_node.worker import Worker
from tests.conftest import free_port, make_settings
from tests.delivery_helpers import job_with_deliveries, sop_uids_and_paths
from tests.notify_peers import SmtpReceiver, WebhookReceiver
from tests.tls_certs import make_pki

SECRET = "correct horse battery staple"
PATIENT = "PAT-SECRET-4711"  # the patient key of the test series: never in a message
ACCESSION = "ACC-0815"


def _wait(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {timeout} s: {what}")


@pytest.fixture()
def hook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture()
def smtp() -> Iterator[SmtpReceiver]:
    receiver = SmtpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The index on SQLite, and on the local PostgreSQL (the outbox SQL on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


def _notifications(hook_url: str, smtp_port: int, **extra: Any) -> dict[str, Any]:
    return {"webhooks": [{"name": "ops", "url": hook_url, "secret": SECRET}],
            "email": {"host": "127.0.0.1", "port": smtp_port, "security": "none",
                      "from_address": "dicom-node@hospital.org"},
            "retry_backoff_seconds": 0.1, "retry_max_backoff_seconds": 0.2, "poll_interval_seconds": 0.1, **extra}


def _settings(tmp: Path, hook_url: str, smtp_port: int, *, model: str = "builtin", database_url: str = "",
              **extra: Any) -> Settings:
    return make_settings(
        tmp, node={"database_url": database_url or f"sqlite:///{tmp / 'index.sqlite'}"},
        destinations=[{"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(),
                       "max_age_hours": 0.0001}],
        routing={"rules": [{"name": "pelvis", "model": model, "destinations": ["PACS"],
                            "notify": ["ops", "mailto:physics@hospital.org"]}]},
        notifications=_notifications(hook_url, smtp_port, **extra))


def _queued_job(settings: Settings, factory: sessionmaker[Session], tmp: Path) -> int:
    """A queued job of the settings' rule on one CT instance (a file on disk) of patient PATIENT."""
    path = tmp / "ct-1.dcm"
    path.write_bytes(b"not read: the model fails first")
    meta = InstanceMeta(sop_uid="1.2.3.4.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        transfer_syntax_uid="1.2.840.10008.1.2.1", study_uid="1.2.3", series_uid="1.2.3.4",
                        patient_key=PATIENT, modality="CT", series_description="Pelvis 3mm",
                        accession_number=ACCESSION, instance_number=1, slice_position=0.0)
    index.record_instance(factory, meta, str(path), path.stat().st_size, None)
    (action,) = route(settings, SeriesAttributes(Modality="CT"))
    with factory.begin() as s:
        (view,) = index.receiving_series(s)
        job = jobs.enqueue(s, view.id, view.series_uid, action, 1)
        assert job is not None
        s.flush()
        return job.id


def _messages(factory: sessionmaker[Session]) -> list[NotificationMessage]:
    with factory() as s:
        return list(s.scalars(select(NotificationMessage).order_by(NotificationMessage.id)))


def _events(factory: sessionmaker[Session]) -> list[NotificationEvent]:
    with factory() as s:
        return list(s.scalars(select(NotificationEvent).order_by(NotificationEvent.id)))


def test_a_failing_job_is_told_by_signed_webhook_and_by_email_from_the_running_worker(
        tmp_path: Path, hook: WebhookReceiver, smtp: SmtpReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = _settings(tmp_path, hook.url, smtp.port, model="no-such-model",
                         templates={"job_failed": {"subject": "Job {job_id} of {rule} failed: {error_class}"}})
    factory = open_index(settings.node.database_url)
    job_id = _queued_job(settings, factory, tmp_path)
    worker = Worker(settings, factory, "notify-worker")
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    try:
        _wait("the webhook and the e-mail", lambda: len(hook.received) == 1 and len(smtp.messages) == 1)
    finally:
        worker.stop_event.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == JobStatus.FAILED
        error_class = job.error_class
    (received,) = hook.received
    assert received.path == "/hooks/dicom-node"
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["X-DicomNode-Event"] == "job_failed"
    assert received.signed_with(SECRET.encode())
    assert not received.signed_with(b"another secret")
    document = received.json()
    assert document["event"] == "job_failed" and document["node"] == "DICOMNODE"
    assert document["facts"]["job_id"] == job_id and document["facts"]["rule"] == "pelvis"
    assert document["facts"]["model"] == "no-such-model" and document["facts"]["error_class"] == error_class
    assert document["subject"] == f"Job {job_id} of pelvis failed: {error_class}"
    sender, recipients, mail = smtp.messages[0]
    assert (sender, recipients) == ("dicom-node@hospital.org", ["physics@hospital.org"])
    assert mail["Subject"] == f"Job {job_id} of pelvis failed: {error_class}"  # the configured template
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert f"Job {job_id} (rule pelvis, model no-such-model) failed after 1 attempt(s)" in text  # built-in body
    for body in (received.body.decode(), text, mail["Subject"]):
        assert PATIENT not in body and ACCESSION not in body and "Pelvis 3mm" not in body
    assert [(m.channel, m.status) for m in _messages(factory)] == [("webhook", MessageStatus.SENT),
                                                                   ("email", MessageStatus.SENT)]
    assert "notification 1 (job_failed) sent to webhook ops" in caplog.text
    assert "notification 2 (job_failed) sent to e-mail" in caplog.text  # the address is not logged
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("dicom_node"))  # not aiosmtpd's
    assert f"job {job_id} failed: ModelError" in ours and PATIENT not in ours and "physics@hospital.org" not in ours


def test_a_peer_that_is_down_gets_the_message_once_it_is_back(tmp_path: Path, database_url: str) -> None:
    hook_port, smtp_port = free_port(), free_port()
    settings = _settings(tmp_path, f"http://127.0.0.1:{hook_port}/in", smtp_port, database_url=database_url)
    factory = open_index(settings.node.database_url)
    job_id = _queued_job(settings, factory, tmp_path)
    jobs.finish(factory, job_id, JobStatus.FAILED, error=RuntimeError("model raised"))
    notifier = Notifier(settings, factory, "notifier-test")
    notifier.drain_once()  # both peers down: each message failed once, kept for a retry
    messages = _messages(factory)
    assert [(m.status, m.attempts) for m in messages] == [(MessageStatus.PENDING, 1)] * 2
    assert "Connection refused" in messages[0].last_error and "Connection refused" in messages[1].last_error
    hook, smtp = WebhookReceiver(hook_port), SmtpReceiver(smtp_port)
    try:
        time.sleep(0.25)  # past the back-off
        notifier.drain_once()
        time.sleep(0.25)
        notifier.drain_once()  # nothing is sent twice
        assert len(hook.received) == 1 and len(smtp.messages) == 1
        assert hook.received[0].json()["facts"]["error"] == "model raised"
    finally:
        hook.stop()
        smtp.stop()
    assert [(m.status, m.attempts) for m in _messages(factory)] == [(MessageStatus.SENT, 2)] * 2


def test_a_message_dead_after_its_maximum_age_is_listed_with_its_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path, f"http://127.0.0.1:{free_port()}/in", free_port(), max_age_hours=0.0001)
    factory = open_index(settings.node.database_url)
    job_id = _queued_job(settings, factory, tmp_path)
    jobs.finish(factory, job_id, JobStatus.FAILED, error=RuntimeError("model raised"))
    notifier = Notifier(settings, factory, "notifier-test")
    notifier.drain_once()
    time.sleep(0.4)  # 0.0001 h
    notifier.drain_once()
    assert [m.status for m in _messages(factory)] == [MessageStatus.DEAD] * 2
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nae_title = "DICOMNODE"\nstorage_dir = "{tmp_path / "storage"}"\n'
                      f'database_url = "{settings.node.database_url}"\n[identity]\nuid_root = "1.2.3"\n'
                      'manufacturer = "T"\nmanufacturer_model_name = "T"\nsoftware_version = "1"\n'
                      'device_serial_number = "1"\n')
    assert cli.main(["notifications", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    event_line, *message_lines = out.splitlines()[1:]
    assert event_line.split()[3:] == ["job_failed", str(job_id), "pelvis"]
    assert [line.strip() for line in message_lines] == [
        "webhook ops: dead after 2 tries: webhook ops: URLError: [Errno 111] Connection refused",
        f"email physics@hospital.org: dead after 2 tries: SMTP 127.0.0.1:{settings.notifications.email.port}: "
        "ConnectionRefusedError: [Errno 111] Connection refused"]


def test_a_delivery_going_dead_is_told_once_for_its_objects_to_that_destination(
        tmp_path: Path, hook: WebhookReceiver, smtp: SmtpReceiver, nsclc_ct_files: list[Path],
        database_url: str) -> None:
    settings = _settings(tmp_path, hook.url, smtp.port, database_url=database_url)
    factory = open_index(settings.node.database_url)
    job_id = job_with_deliveries(settings, factory, sop_uids_and_paths(nsclc_ct_files[:2]))
    time.sleep(0.4)  # past the destination's max_age_hours (0.0001): the first failed try is the last
    DeliveryLoop(settings, factory, "sender").deliver_due()  # nothing listens on PACS's port
    with factory() as s:
        assert {d.status.value for d in jobs.deliveries_of(s, job_id)} == {"dead"}
    (event,) = _events(factory)
    assert (event.kind, event.job_id, event.subject) == ("delivery_dead", job_id, f"job {job_id} to PACS")
    Notifier(settings, factory, "notifier-test").drain_once()
    (received,) = hook.received
    facts = received.json()["facts"]
    assert (facts["destination"], facts["job_id"], facts["attempts"]) == ("PACS", job_id, 1)
    port = settings.destinations["PACS"].port
    assert facts["error"] == f"PACS (PACS@127.0.0.1:{port}) cannot be reached: Connection refused"
    assert smtp.messages[0][2]["Subject"] == f"[DICOMNODE] Job {job_id}: delivery to PACS failed"


def test_disk_low_goes_to_the_defaults_once_while_the_disk_stays_low(
        tmp_path: Path, hook: WebhookReceiver, smtp: SmtpReceiver) -> None:
    settings = make_settings(tmp_path, notifications=_notifications(hook.url, smtp.port, defaults=["ops"]),
                             housekeeping={"emergency_free_disk_mb": 2048})
    factory = open_index(settings.node.database_url)

    class Full:
        free = 50 * 1024 * 1024

    for _run in range(3):  # every housekeeping interval finds the disk low; one notification
        report = run_housekeeping(settings, factory, disk_usage=lambda _p: Full())
        assert report.shortfall
    run_housekeeping(settings, factory, dry_run=True, disk_usage=lambda _p: Full())
    Notifier(settings, factory, "notifier-test").drain_once()
    (received,) = hook.received
    document = received.json()
    assert document["event"] == "disk_low" and received.signed_with(SECRET.encode())
    assert document["facts"] == {"free_mb": 50, "threshold_mb": 2048, "waiting_series": 0}
    assert document["subject"] == "[DICOMNODE] Disk low: 50 MB free"
    assert smtp.messages == []  # the defaults name the webhook only
    assert [e.kind for e in _events(factory)] == ["disk_low"]


def test_outputs_superseded_after_delivery_and_review_needed_are_told_to_the_rule(
        tmp_path: Path, hook: WebhookReceiver, smtp: SmtpReceiver) -> None:
    settings = _settings(tmp_path, hook.url, smtp.port, include_identifiers=True, templates={
        "review_needed": {"body": "Review job {job_id} ({accession_number}): {structures}"}})
    factory = open_index(settings.node.database_url)
    first = _queued_job(settings, factory, tmp_path)
    assert jobs.claim(factory, "pipeline") == first
    jobs.add_deliveries(factory, first, [Delivery(destination="PACS", kind="SEG", sop_uid="9.1",
                                                  sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4", path="/o/seg.dcm")])
    with factory() as s:
        (row,) = jobs.deliveries_of(s, first)
    jobs.mark_sent(factory, row.id)
    (action,) = route(settings, SeriesAttributes(Modality="CT"))
    with factory.begin() as s:
        series_id = s.get(Job, first).series_id  # type: ignore[union-attr]
        grown = jobs.enqueue(s, series_id, "1.2.3.4", action, 2)
        assert grown is not None
        assert supersession.link(s, grown, series_id) == (first, True)
        second = grown.id
    with factory.begin() as s:
        notify.review_needed(s, second, ["Prostate", "Rectum"])
    Notifier(settings, factory, "notifier-test").drain_once()
    kinds = [(h.json()["event"], h.json()["facts"]["job_id"]) for h in hook.received]
    assert kinds == [("superseded", first), ("review_needed", second)]
    assert hook.received[0].json()["facts"]["new_job_id"] == second
    subjects = [m["Subject"] for _from, _to, m in smtp.messages]
    assert subjects == [f"[DICOMNODE] Outputs of job {first} replaced by job {second} (rule pelvis)",
                        f"[DICOMNODE] Job {second} waits for review (rule pelvis)"]
    review = smtp.messages[1][2].get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert review.strip() == f"Review job {second} ({ACCESSION}): Prostate, Rectum"  # include_identifiers = true


def test_an_event_nobody_is_named_for_says_so_and_sends_nothing(tmp_path: Path, hook: WebhookReceiver) -> None:
    settings = make_settings(tmp_path, notifications={"webhooks": [{"name": "ops", "url": hook.url,
                                                                    "secret": SECRET}],
                                                      "events": ["disk_low"]})
    factory = open_index(settings.node.database_url)
    notify.emit(factory, notify.Event("job_failed", None, {"job_id": 1}))
    notify.emit(factory, notify.Event("disk_low", None, {"free_mb": 1}))
    Notifier(settings, factory, "notifier-test").drain_once()
    assert [(e.kind, e.fanned_out, e.note) for e in _events(factory)] == [
        ("job_failed", True, "job_failed is not in notifications.events"),
        ("disk_low", True, "no recipients (the rule names none, nor notifications.defaults)")]
    assert hook.received == [] and _messages(factory) == []


def test_email_over_starttls_with_a_login_verifies_the_servers_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    password = tmp_path / "smtp-password"
    password.write_text("s3cret\n")
    smtp = SmtpReceiver(cert=(pki.server_cert, pki.server_key), login=("dicom-node", "s3cret"))
    email = {"host": "localhost", "port": smtp.port, "security": "starttls", "user": "dicom-node",
             "password_file": str(password), "from_address": "dicom-node@hospital.org"}
    try:
        for ca, sent in ((pki.other_ca, False), (pki.ca, True)):  # a server the CA did not sign is not trusted
            settings = make_settings(tmp_path / ca.stem, notifications={
                "email": {**email, "ca_file": str(ca)}, "defaults": ["mailto:pacs-admin@hospital.org"]})
            factory = open_index(settings.node.database_url)
            notify.emit(factory, notify.Event("disk_low", None, {"free_mb": 10, "threshold_mb": 2048,
                                                                 "waiting_series": 3}))
            Notifier(settings, factory, "notifier-test").drain_once()
            (message,) = _messages(factory)
            assert (message.status == MessageStatus.SENT) is sent, message.last_error
            if not sent:
                assert "CERTIFICATE_VERIFY_FAILED" in message.last_error
        (_from, to, mail), = smtp.messages
        assert to == ["pacs-admin@hospital.org"] and mail["Subject"] == "[DICOMNODE] Disk low: 10 MB free"
        assert "3 series wait for their jobs or deliveries" in mail.get_payload(decode=True).decode()  # type: ignore
    finally:
        smtp.stop()


def test_an_error_answer_or_a_redirect_is_a_failed_try(tmp_path: Path, hook: WebhookReceiver) -> None:
    settings = make_settings(tmp_path, notifications={
        "webhooks": [{"name": "ops", "url": hook.url, "secret": SECRET}], "defaults": ["ops"],
        "retry_backoff_seconds": 0.1, "retry_max_backoff_seconds": 0.1})
    factory = open_index(settings.node.database_url)
    notify.emit(factory, notify.Event("disk_low", None, {"free_mb": 1}))
    notifier = Notifier(settings, factory, "notifier-test")
    errors = []
    for status in (500, 302, 200):  # a redirect is not followed: a POST would reach its target as a GET
        hook.status = status
        notifier.drain_once()
        (message,) = _messages(factory)
        errors.append((message.status, message.last_error))
        time.sleep(0.15)
    assert errors == [(MessageStatus.PENDING, "webhook ops answered HTTP 500"),
                      (MessageStatus.PENDING, "webhook ops answered HTTP 302"), (MessageStatus.SENT, "")]
    assert len(hook.received) == 3 and len({h.headers["X-DicomNode-Message"] for h in hook.received}) == 1
    assert len({h.body for h in hook.received}) == 1  # each retry sends the same signed bytes


def test_a_job_whose_worker_keeps_dying_is_told_as_failed_once(tmp_path: Path, hook: WebhookReceiver,
                                                               smtp: SmtpReceiver) -> None:
    settings = _settings(tmp_path, hook.url, smtp.port)
    factory = open_index(settings.node.database_url)
    job_id = _queued_job(settings, factory, tmp_path)
    for _attempt in range(3):  # claimed, then its worker is gone; the third loss fails it
        assert jobs.claim(factory, "dying-worker") == job_id
        jobs.release_own(factory, "dying-worker", max_attempts=3)
    jobs.release_own(factory, "dying-worker", max_attempts=3)  # nothing held any more: nothing new
    (event,) = _events(factory)
    assert (event.kind, event.job_id) == ("job_failed", job_id)
    Notifier(settings, factory, "notifier-test").drain_once()
    facts = hook.received[0].json()["facts"]
    assert (facts["error_class"], facts["attempts"]) == ("WorkerLost", 3)
    assert facts["error"].startswith("worker died during the job 3 times")


def test_send_test_reaches_a_webhook_and_a_mailbox_and_says_when_it_cannot(
        tmp_path: Path, hook: WebhookReceiver, smtp: SmtpReceiver, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "ops.secret"
    secret.write_text(SECRET + "\n")
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nae_title = "DICOMNODE"\nstorage_dir = "{tmp_path / "storage"}"\n'
                      f'database_url = "sqlite:///{tmp_path / "index.sqlite"}"\n[identity]\nuid_root = "1.2.3"\n'
                      'manufacturer = "T"\nmanufacturer_model_name = "T"\nsoftware_version = "1"\n'
                      'device_serial_number = "1"\n[[notifications.webhooks]]\nname = "ops"\n'
                      f'url = "{hook.url}"\nsecret_file = "ops.secret"\n[[notifications.webhooks]]\nname = "down"\n'
                      f'url = "http://127.0.0.1:{free_port()}/x"\nsecret = "s"\n[notifications.email]\n'
                      f'host = "127.0.0.1"\nport = {smtp.port}\nsecurity = "none"\n'
                      'from_address = "dicom-node@hospital.org"\n')
    runs = [(recipient, cli.main(["notifications", "--send-test", recipient, "--config", str(config)]))
            for recipient in ("ops", "mailto:pacs-admin@hospital.org", "down", "pager")]
    assert [code for _r, code in runs] == [0, 0, 1, 1]
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["test message sent to ops", "test message sent to mailto:pacs-admin@hospital.org"]
    assert lines[2].startswith("test message to down failed: webhook down: URLError: [Errno 111]")
    assert lines[3] == "test message to pager failed: 'pager' is not a configured webhook (known: ops, down)"
    (received,) = hook.received
    assert received.signed_with(SECRET.encode()) and received.json()["event"] == "test"
    assert smtp.messages[0][1] == ["pacs-admin@hospital.org"]
    assert smtp.messages[0][2]["Subject"] == "[DICOMNODE] Test notification"


def test_a_job_held_for_review_tells_the_rule_and_the_reviewers_with_an_address(
        tmp_path: Path, hook: WebhookReceiver, smtp: SmtpReceiver) -> None:
    settings = make_settings(
        tmp_path, notifications=_notifications(hook.url, smtp.port),
        routing={"rules": [{"name": "pelvis", "model": "builtin", "destinations": [], "review": "required",
                            "reviewers": ["phil", "dosimetry@hospital.org"], "notify": ["ops"]}]})
    factory = open_index(settings.node.database_url)
    job_id = _queued_job(settings, factory, tmp_path)
    assert jobs.claim(factory, "pipeline") == job_id
    assert review.hold(factory, job_id, ["Prostate", "Rectum", "Bladder"])  # as the worker holds it
    assert not review.hold(factory, job_id, ["Prostate"])  # held once: told once
    Notifier(settings, factory, "notifier-test").drain_once()
    (received,) = hook.received
    assert received.json()["event"] == "review_needed"
    assert received.json()["facts"]["structures"] == "Prostate, Rectum, Bladder"
    (_from, to, mail), = smtp.messages  # "phil" is a web user without an address: the queue shows the job
    assert to == ["dosimetry@hospital.org"]
    assert mail["Subject"] == f"[DICOMNODE] Job {job_id} waits for review (rule pelvis)"
    assert "Structures: Prostate, Rectum, Bladder" in mail.get_payload(decode=True).decode()  # type: ignore
