"""Raw PDUs for the listener, malformed and well formed, built with ``struct`` (PS3.8 section 9.3).

A ``PduCase`` is what a peer sends on a fresh TCP connection, chunk by chunk, and the answers
the node may give: the PDU types it sends back before it closes the connection (an empty tuple
when it only closes). ``c_store`` builds a C-STORE request with pynetdicom's own DIMSE encoder,
so a dataset of any bytes (and any Affected SOP Class) can go out over a raw association.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from tests.corpus.datasets import CT, good_stream

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 1, 2, 3, 4, 5, 6, 7


def _item(kind: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body) if length is None else length) + body


def _uid(kind: int, uid: str) -> bytes:
    return _item(kind, uid.encode("ascii"))


def presentation_context(context_id: int, abstract: str, syntaxes: list[str]) -> bytes:
    body = struct.pack(">BBBB", context_id, 0, 0, 0) + _uid(0x30, abstract) + b"".join(_uid(0x40, s) for s in syntaxes)
    return _item(0x20, body)


def user_information(max_pdu: int = 16384) -> bytes:
    return _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _uid(0x52, "1.2.826.0.1.3680043.8.498.1"))


def associate_rq(called: str = "DICOMNODE", calling: str = "TESTSCU", contexts: bytes | None = None,
                 version: int = 1, extra: bytes = b"", length: int | None = None) -> bytes:
    """An A-ASSOCIATE-RQ; ``contexts`` defaults to CT in Explicit VR Little Endian (id 1)."""
    if contexts is None:
        contexts = presentation_context(1, CT, [ExplicitVRLittleEndian])
    body = (struct.pack(">HH", version, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + b"\0" * 32
            + _uid(0x10, APPLICATION_CONTEXT) + contexts + extra + user_information())
    return struct.pack(">BBI", ASSOCIATE_RQ, 0, len(body) if length is None else length) + body


def p_data(*pdvs: tuple[int, int, bytes], length: int | None = None, pdv_length: int | None = None) -> bytes:
    """A P-DATA-TF of (context id, message control header, fragment) PDVs."""
    body = b"".join(struct.pack(">IBB", len(data) + 2 if pdv_length is None else pdv_length, cid, control) + data
                    for cid, control, data in pdvs)
    return struct.pack(">BBI", P_DATA, 0, len(body) if length is None else length) + body


def c_store(dataset: bytes, sop_class: str = CT, sop_uid: str | None = None, context_id: int = 1) -> bytes:
    """The P-DATA-TF PDUs of a C-STORE-RQ carrying ``dataset`` as its (already encoded) data set."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_uid or generate_uid()
    request.Priority = 2
    request.DataSet = io.BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    out = b""
    for primitive in message.encode_msg(context_id, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += pdu.encode()
    return out


RELEASE = struct.pack(">BBI", RELEASE_RQ, 0, 4) + b"\0" * 4


@dataclass(frozen=True)
class PduCase:
    name: str
    chunks: tuple[bytes, ...]
    answers: frozenset[tuple[int, ...]]


def _case(name: str, chunks: list[bytes], *answers: tuple[int, ...]) -> PduCase:
    return PduCase(name, tuple(chunks), frozenset(answers))


def pdu_cases() -> list[PduCase]:
    rq = associate_rq()
    _sop, good = good_stream()
    return [
        _case("unknown PDU type", [b"\x09\x00\x00\x00\x00\x04abcd"], (), (ABORT,)),
        _case("A-ASSOCIATE-RQ declaring 4 GB", [rq[:2] + b"\xff\xff\xff\xff" + rq[6:]], ()),
        _case("A-ASSOCIATE-RQ cut short", [rq[:40]], ()),
        _case("PDU header cut short", [b"\x01\x00\x00"], ()),
        _case("A-ASSOCIATE-RQ shorter than its items", [associate_rq(length=80)], (ABORT,), ()),
        _case("item length past the PDU", [associate_rq(extra=_item(0x20, b"\x03\0\0\0", length=0xFFF0))],
              (ABORT,), ()),
        _case("unknown item type", [associate_rq(extra=_item(0x99, b"junk"))], (ABORT,), (ASSOCIATE_RJ,), ()),
        _case("no application context", [rq.replace(_uid(0x10, APPLICATION_CONTEXT), b"")], (ABORT,),
              (ASSOCIATE_RJ,), ()),
        # pynetdicom accepts an association without contexts; nothing can be sent over it
        _case("no presentation context", [associate_rq(contexts=b"")], (ABORT,), (ASSOCIATE_RJ,), (ASSOCIATE_AC,), ()),
        _case("protocol version 2 only", [associate_rq(version=2)], (ASSOCIATE_RJ,)),
        _case("wrong called AE title", [associate_rq(called="SOMEONE")], (ASSOCIATE_RJ,)),
        _case("unknown transfer syntax only, then a C-STORE", [
            associate_rq(contexts=presentation_context(1, CT, ["1.2.3.4.5.6.7"])), c_store(good)],
              (ASSOCIATE_AC, ABORT), (ASSOCIATE_AC,), (ASSOCIATE_RJ,)),
        _case("P-DATA-TF before any association", [p_data((1, 0x03, b"\0" * 16))], (ABORT,), ()),
        _case("A-RELEASE-RQ before any association", [RELEASE], (ABORT,), ()),
        _case("PDV length past the PDU", [rq, p_data((1, 0x03, b"\0" * 16), pdv_length=0x7FFF)],
              (ASSOCIATE_AC, ABORT), (ASSOCIATE_AC,)),
        _case("PDV shorter than its header", [rq, p_data((1, 0x03, b""), pdv_length=1)],
              (ASSOCIATE_AC, ABORT), (ASSOCIATE_AC,)),
        _case("P-DATA-TF declaring 4 GB", [rq, p_data((1, 0x03, b"\0" * 16), length=0xFFFFFFF0)], (ASSOCIATE_AC,)),
        _case("unknown presentation context id", [rq, c_store(good, context_id=99)],
              (ASSOCIATE_AC, ABORT), (ASSOCIATE_AC,)),
        _case("garbage command", [rq, p_data((1, 0x03, b"\x55" * 64))], (ASSOCIATE_AC, ABORT), (ASSOCIATE_AC,)),
        _case("data set with no command", [rq, p_data((1, 0x02, good))], (ASSOCIATE_AC, ABORT), (ASSOCIATE_AC,)),
        _case("command that never ends", [rq, p_data((1, 0x01, b"\x00" * 32))], (ASSOCIATE_AC,)),
        _case("Enhanced CT request on a CT context", [rq, c_store(good, sop_class=ENHANCED_CT), RELEASE],
              (ASSOCIATE_AC, P_DATA, RELEASE_RP), (ASSOCIATE_AC, ABORT), (ASSOCIATE_AC,)),
        _case("C-STORE of garbage over a raw association", [rq, c_store(b"\x13" * 400), RELEASE],
              (ASSOCIATE_AC, P_DATA, RELEASE_RP)),
        _case("release, then garbage", [rq, RELEASE, b"\x55" * 32], (ASSOCIATE_AC, RELEASE_RP),
              (ASSOCIATE_AC, RELEASE_RP, ABORT), (ASSOCIATE_AC, ABORT)),
    ]
