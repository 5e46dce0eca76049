"""/metrics for Prometheus, read from the index at scrape time (so every process's work counts) and optionally
behind a bearer token ([web] metrics_token).

What the index holds is exported as gauges (housekeeping removes instance rows, so those totals may go
down). Counters come from rows housekeeping never lowers: the instances and bytes the receiver
committed (the series' ``received_*`` columns, raised in the group commit's transaction) and the
association audit's rows by result. Stage durations are histograms over the last finished jobs' timings.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from dicom_node.db import overview
from dicom_node.web.routes.dashboard import free_disk_mb
from dicom_node.web.state import NodeState, node_state

router = APIRouter()
STAGE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, math.inf)


class IndexCollector(Collector):
    def __init__(self, state: NodeState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        with self.state.factory() as session:
            instances, size = overview.instance_totals(session)
            received, received_bytes = overview.received_totals(session)
            audited = overview.association_audit_totals(session)
            associations, aborted = overview.association_totals(session)
            by_reason = overview.series_by_reason(session)
            jobs = overview.jobs_by_status(session)
            deliveries = overview.deliveries_by_outcome(session)
            timings = overview.recent_timings(session)
        yield GaugeMetricFamily("dicom_node_instances", "instances held in the index", value=instances)
        yield GaugeMetricFamily("dicom_node_instance_bytes", "bytes of the instances held in the index", value=size)
        yield CounterMetricFamily("dicom_node_instances_received", "instances the receiver stored and indexed",
                                  value=received)
        yield CounterMetricFamily("dicom_node_received_bytes", "bytes of the instances the receiver stored",
                                  value=received_bytes)
        results = CounterMetricFamily("dicom_node_association_results",
                                      "inbound connections by what the listener did (the association audit)",
                                      labels=["result"])
        for result, count in audited.items():
            results.add_metric([result], count)
        yield results
        assoc = GaugeMetricFamily("dicom_node_associations", "inbound associations accepted, by how they ended",
                                  labels=["outcome"])
        assoc.add_metric(["released_or_open"], associations - aborted)
        assoc.add_metric(["aborted"], aborted)
        yield assoc
        series = GaugeMetricFamily("dicom_node_series_completed", "series judged complete, by state and reason",
                                   labels=["state", "reason"])
        for (state, reason), count in sorted(by_reason.items()):
            series.add_metric([state, reason], count)
        yield series
        job_gauge = GaugeMetricFamily("dicom_node_jobs", "jobs by state", labels=["state"])
        for state, count in jobs.items():
            job_gauge.add_metric([state], count)
        yield job_gauge
        yield GaugeMetricFamily("dicom_node_queue_depth", "jobs queued, not yet claimed", value=jobs["queued"])
        delivered = GaugeMetricFamily("dicom_node_deliveries", "deliveries by destination and outcome",
                                      labels=["destination", "outcome"])
        for (dest, outcome), count in sorted(deliveries.items()):
            delivered.add_metric([dest, outcome], count)
        yield delivered
        yield from _stage_histograms(timings)
        free = free_disk_mb(self.state.settings.node.storage_dir)
        if free is not None:
            yield GaugeMetricFamily("dicom_node_free_disk_bytes", "free disk on the storage volume",
                                    value=free * 1024 * 1024)


def _stage_histograms(timings: list[dict[str, float]]) -> Iterator[Metric]:
    family = HistogramMetricFamily("dicom_node_stage_seconds", "stage durations of the last finished jobs",
                                   labels=["stage"])
    stages = sorted({stage for t in timings for stage in t})
    for stage in stages:
        values = [t[stage] for t in timings if stage in t]
        buckets = [(("+Inf" if math.isinf(b) else f"{b:g}"), sum(1 for v in values if v <= b)) for b in STAGE_BUCKETS]
        family.add_metric([stage], buckets, sum_value=sum(values))
    yield family


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    state = node_state(request)
    token = state.settings.web.metrics_token
    if token:
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise HTTPException(status_code=401, detail="metrics token required",
                                headers={"WWW-Authenticate": "Bearer"})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IndexCollector(state))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
