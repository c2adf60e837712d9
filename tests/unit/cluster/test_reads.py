"""Consistent-read answers (``muheam.cluster.reads``) from a real one-node engine, with the mesh replaced by a
recorder: an answer never exceeds its byte budget, so it always fits in one mesh message."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from locking.messages import Mode
from muheam.cluster import reads
from muheam.cluster.ownership import Ownership, chain_resource, decode_images
from muheam.engine import Engine, EngineConfig
from muheam.storage.layout import BLOCK_SIZE
from tests.support.engines import open_engines, shared_dir
from tests.unit.cluster.test_ownership import GrantingLocks


class RecordingMesh:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str, Any]] = []

    def on(self, kind: str, fn: Callable[..., None]) -> None:
        pass

    def send(self, node: int, kind: str, body: Any, label: str = "") -> bool:
        self.sent.append((node, kind, body))
        return True


class Locks(GrantingLocks):
    removal_hooks: list[Callable[[int], None]] = []


def test_an_answer_stops_at_its_byte_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three one-page chains held exclusively, a budget for two: the first two are copied, the third (and every
    chain after a refused one) answered None, so the asker takes the lock for it instead of getting a message
    too big for the mesh (ZeroMQ drops a connection that receives one)."""
    shared = tmp_path / "shared"
    (shared / "global").mkdir(parents=True)
    (shared / "global" / "control").write_text("{}")
    engine = Engine.open(shared, 1, config=EngineConfig(segment_size=1 << 20))
    t = engine.create_table("t", {"v": "int64"}, buckets=4)
    own = Ownership(Locks(), engine)  # type: ignore[arg-type]
    for bucket in (1, 2, 3):
        own.held[chain_resource(t.table_id, bucket)] = Mode.EXCLUSIVE
    mesh = RecordingMesh()
    cr = reads.ConsistentReads(mesh, Locks(), own, engine)  # type: ignore[arg-type]
    monkeypatch.setattr(reads, "ANSWER_BYTES", 2 * BLOCK_SIZE + 100)
    cr._answer(2, 7, [[t.table_id, 1], [t.table_id, 2], [t.table_id, 3], [t.table_id, 4]])
    [(node, kind, body)] = mesh.sent
    assert (node, kind, body[0], body[1]) == (2, reads.KIND, "r", 7)
    answers = {bucket: value for _, bucket, value in body[2]}
    assert [b for b, _ in decode_images(answers[1])] == [1] and [b for b, _ in decode_images(answers[2])] == [2]
    assert answers[3] is None and answers[4] is None
    assert cr.counters["copies_sent"] == 2 and cr.counters["copies_refused"] == 2
    engine.close()


class CopyLocks(Locks):
    def read_source(self, resource: bytes) -> int:
        return 1  # node 1 holds every chain of the table exclusively: read a copy from it


class HandlingMesh(RecordingMesh):
    def __init__(self) -> None:
        super().__init__()
        self.handlers: dict[str, Callable[..., None]] = {}

    def on(self, kind: str, fn: Callable[..., None]) -> None:
        self.handlers[kind] = fn


def test_copies_outlive_the_trims_of_their_operation_and_what_its_answer_sets_going(tmp_path: Path) -> None:
    """Node 2 (a 64-page cache) scans a 600-chain table whose rows are only in node 1's cache, from copies, and
    in the same run writes a table it holds.  Its scan trimmed between 256-chain batches, and the write trimmed
    too, evicting copies still to be read, which were then read from the shared file, where node 1 had not
    written: committed rows were missing (found by reading the code, then by a review).  Copies are pinned for
    the operation now; the cache stays bounded by its capacity plus the copies; and an in-process callback of
    the operation's answer (the SQL port's next operation) runs only after the copies are gone."""
    from muheam.cluster.ownership import CATALOG, encode_images, extend_resource
    from muheam.cluster.sessions import SCAN_AHEAD
    from muheam.net import wire
    from muheam.net.clientport import Deferred
    from muheam.storage import mvcc

    a, b = open_engines(shared_dir(tmp_path), EngineConfig(segment_size=1 << 22),
                        EngineConfig(segment_size=1 << 22, cache_pages=64))
    t = a.create_table("t", {"v": "int64"}, buckets=600)
    u = a.create_table("u", {"v": "int64"}, buckets=1)
    b.reload_catalog()
    tx = a.begin(100)
    for key in range(1200):
        tx.insert("t", key, {"v": key})
    tx.commit()  # node 1's pages stay in its cache: the file has none of these rows
    b.status = lambda x: mvcc.COMMITTED if x in a.committed else b.local_status(x)  # type: ignore[method-assign]
    locks, mesh = CopyLocks(), HandlingMesh()
    own = Ownership(locks, b)  # type: ignore[arg-type]
    own.held[CATALOG] = Mode.SHARED
    own.held[chain_resource(u.table_id, 1)] = Mode.EXCLUSIVE
    own.held[extend_resource(u.table_id)] = Mode.EXCLUSIVE
    cr = reads.ConsistentReads(mesh, locks, own, b)  # type: ignore[arg-type]
    txn = b.begin(200, b.local_snapshot(200))
    seen: dict[str, Any] = {}
    answer = Deferred()
    answer.then(lambda ok, value: seen.update(after=(value, len(own.readable))))

    def run() -> None:  # one attempt of the operation
        seen["scanned"] = sum(1 for _ in txn.scan("t"))
        txn.insert("u", 1, {"v": 1})  # a write on a chain node 2 holds trims the cache
        seen["missing"] = sum(1 for k in range(1200) if txn.get("t", k) is None)
        seen["cached"] = len(b.cache)
        answer.resolve("done")
        seen["answered_inside"] = "after" in seen

    assert cr.read(chain_resource(t.table_id, 1), run, ahead=SCAN_AHEAD)
    [(_, _, (_, rid, chains))] = mesh.sent
    out = []
    for tid, bucket in chains:
        blocks = a.cache.chain_blocks(tid, bucket, t.nbuckets)
        out.append([tid, bucket, encode_images([(blk, a.cache.read(tid, blk).encode()) for blk in blocks])])
    copies = sum(len(decode_images(v)) for _, _, v in out)
    mesh.handlers[reads.KIND](wire.PeerMessage(sender=1, epoch=0, stamp=0, kind=reads.KIND, body=["r", rid, out]))
    assert seen["scanned"] == 1200 and seen["missing"] == 0
    assert seen["cached"] <= 64 + copies + 2
    assert seen["answered_inside"] is False and seen["after"] == ("done", 0)
    a.close()
    b.close()


class FlushingLocks(CopyLocks):
    """Like ``LockService``: ``acquire`` ends with a flush, which also delivers grants received earlier in the
    loop turn (here: ``arrived``)."""

    def __init__(self, lock_first: bytes) -> None:
        super().__init__()
        self.lock_first = lock_first
        self.arrived: list[Any] = []
        self.waiting: dict[bytes, Callable[[Any], None]] = {}

    def read_source(self, resource: bytes) -> int:
        return reads.USE_LOCK if resource == self.lock_first else 1

    def acquire(self, resource: bytes, mode: Mode, on_grant: Callable[[Any], None]) -> None:
        self.waiting[resource] = on_grant
        while self.arrived:
            grant = self.arrived.pop(0)
            self.waiting.pop(grant.resource)(grant)


def test_another_transactions_operation_run_inside_a_copy_read_does_not_read_its_copies(tmp_path: Path) -> None:
    """Transaction T2 waits for chain 1's lock; its grant arrives in the same loop turn as T1's copies of chains
    2-4, and T1's operation asks for another lock, whose flush runs T2's operation inside T1's.  T2's snapshot
    is newer than the copies (it sees a commit made after node 1 answered): reading them, it missed that
    commit's rows (a review found it).  Only the operation the copies were made for may read them."""
    from locking.effects import Granted
    from locking.glsn import Glsn
    from locking.messages import Version
    from muheam.cluster.ownership import CATALOG, encode_images
    from muheam.cluster.sessions import SCAN_AHEAD
    from muheam.engine.errors import NeedOwnership
    from muheam.net import wire
    from muheam.storage import mvcc
    from muheam.storage.heap import bucket_block

    a, b = open_engines(shared_dir(tmp_path), EngineConfig(segment_size=1 << 22), EngineConfig(segment_size=1 << 22))
    t = a.create_table("t", {"v": "int64"}, buckets=4)
    a.create_table("u", {"v": "int64"}, buckets=1)
    b.reload_catalog()

    def images(bucket: int) -> bytes:
        blocks = a.cache.chain_blocks(t.table_id, bucket, t.nbuckets)
        return encode_images([(blk, a.cache.read(t.table_id, blk).encode()) for blk in blocks])

    tx = a.begin(100)
    for key in range(40):
        tx.insert("t", key, {"v": key})
    tx.commit()
    stale = {bucket: images(bucket) for bucket in (2, 3, 4)}  # node 1's answer, now
    late = [k for k in range(1000, 3000) if bucket_block(k, t.nbuckets) == 3][:5]
    tx = a.begin(101)  # committed after that answer
    for key in late:
        tx.insert("t", key, {"v": key})
    tx.commit()
    b.status = lambda x: mvcc.COMMITTED if x in a.committed else b.local_status(x)  # type: ignore[method-assign]
    first = chain_resource(t.table_id, 1)
    locks, mesh = FlushingLocks(first), HandlingMesh()
    own = Ownership(locks, b)  # type: ignore[arg-type]
    own.held[CATALOG] = Mode.SHARED
    cr = reads.ConsistentReads(mesh, locks, own, b)  # type: ignore[arg-type]

    t2 = b.begin(300, b.local_snapshot(300))  # sees 101
    rows2: list[int] = []
    needed: list[bytes] = []

    def t2_attempt() -> None:  # as Sessions._run_attempt runs it
        own.running.append(t2_attempt)
        try:
            at = 1
            while at <= t.nbuckets:
                chunk, at = b.scan_from(t2, t, at)
                if chunk is not None:
                    rows2.extend(chunk[0].tolist())
        except NeedOwnership as need:
            needed.append(need.resource)  # it asks for its own copies or locks
        finally:
            own.running.pop()

    own.acquire(first, Mode.SHARED, t2_attempt)
    locks.arrived.append(Granted(first, Mode.SHARED, Glsn(9, 1), Version(Glsn(9, 1), 0), images(1), True))
    t1 = b.begin(200, b.local_snapshot(200))

    def t1_op() -> None:
        at = 2
        while at <= t.nbuckets:
            _, at = b.scan_from(t1, t, at)
        try:
            t1.insert("u", 1, {"v": 1})
        except NeedOwnership as need:
            own.acquire(need.resource, need.mode, lambda: None)  # the flush runs T2's operation now

    assert cr.read(chain_resource(t.table_id, 2), t1_op, ahead=SCAN_AHEAD)
    [(_, _, (_, rid, chains))] = mesh.sent
    mesh.handlers[reads.KIND](wire.PeerMessage(sender=1, epoch=0, stamp=0, kind=reads.KIND,
                                               body=["r", rid, [[tid, bk, stale[bk]] for tid, bk in chains]]))
    assert needed == [chain_resource(t.table_id, 2)]  # not read from T1's copies
    assert not set(late) & set(rows2)
    a.close()
    b.close()


def test_a_held_callback_that_raises_does_not_strand_the_others() -> None:
    """Answers settled inside a copy read run their in-process callbacks at its end; one connection's bug there
    must not leave another connection waiting for ever (a review found the loop stopped at the first error)."""
    from muheam.net.clientport import Deferred, callbacks_held

    got: list[str] = []
    first, second = Deferred(), Deferred()

    def broken(ok: bool, value: Any) -> None:
        raise RuntimeError("a bug in one session")

    first.then(broken)
    second.then(lambda ok, value: got.append(value))
    with callbacks_held():
        with callbacks_held():  # nested: the outermost releases
            first.resolve("a")
            second.resolve("b")
        assert got == []
    assert got == ["b"]


def test_a_reader_names_its_copies_and_an_unchanged_chain_is_not_sent_again(tmp_path: Path) -> None:
    """Node 2 keeps its last copy of each chain and names it by digest; node 1 answers True for a chain whose
    pages are those very bytes, and the images for one that changed.  True means the bytes that request named:
    another read's answer may replace the kept copy with an older state meanwhile, and reading that one lost a
    committed row."""
    from muheam.net import wire
    from muheam.storage.heap import bucket_block

    a, b, t, holder_mesh, reader_mesh, held, own, cr = holder_and_reader(tmp_path, buckets=4, rows=40)
    chain2 = chain_resource(t.table_id, 2)
    in2 = [k for k in range(40) if bucket_block(k, t.nbuckets) == 2]
    late2 = [k for k in range(1000, 3000) if bucket_block(k, t.nbuckets) == 2][:3]
    before = encode_chain(a, t.table_id, 2, t.nbuckets)  # node 1's chain 2 at this moment

    def ask(first: bytes, ahead: int, then: Callable[[], None]) -> Any:
        """Send one read's request to node 1 and return its answer (not delivered yet)."""
        assert cr.read(first, then, ahead=ahead)
        _, _, body = reader_mesh.sent.pop()
        held._on_message(wire.PeerMessage(sender=2, epoch=0, stamp=0, kind=reads.KIND, body=body))
        return holder_mesh.sent.pop()[2]

    def deliver(answer: Any) -> None:
        reader_mesh.handlers[reads.KIND](wire.PeerMessage(sender=1, epoch=0, stamp=0, kind=reads.KIND, body=answer))

    def scan(xid: int) -> tuple[Callable[[], None], list[int]]:
        return scan_op(b, t, xid)

    first = chain_resource(t.table_id, 1)
    op, rows = scan(200)
    answer = ask(first, 3, op)
    assert all(isinstance(v, bytes) for _, _, v in answer[2])
    deliver(answer)
    assert sorted(rows) == list(range(40))
    op, rows = scan(201)  # nothing changed: no images travel
    answer = ask(first, 3, op)
    assert [v for _, _, v in answer[2]] == [True] * 4 and held.counters["copies_unchanged"] == 4
    deliver(answer)
    assert sorted(rows) == list(range(40)) and cr.counters["copies_reused"] == 4
    tx = a.begin(101)
    for key in late2:
        tx.insert("t", key, {"v": key})
    tx.commit()
    op, rows = scan(202)  # chain 2 changed: only its images travel
    answer = ask(first, 3, op)
    assert [isinstance(v, bytes) for _, _, v in answer[2]] == [False, True, False, False]
    deliver(answer)
    assert sorted(rows) == sorted([*range(40), *late2])

    got: dict[str, list[int]] = {}

    def keys_of_chain2(name: str, xid: int) -> Callable[[], None]:
        txn = b.begin(xid, b.local_snapshot(xid))
        return lambda: got.__setitem__(name, [k for k in [*in2, *late2] if txn.get("t", k) is not None])

    newer = ask(chain2, 0, keys_of_chain2("newer", 203))  # names the copy with late2: True
    assert [v for _, _, v in newer[2]] == [True]
    assert cr.read(chain2, keys_of_chain2("older", 204), ahead=0)
    _, _, (_, rid, _) = reader_mesh.sent.pop()
    deliver(["r", rid, [[t.table_id, 2, before]]])  # an answer of an earlier moment arrives first
    deliver(newer)
    assert got["newer"] == [*in2, *late2]
    a.close()
    b.close()


def holder_and_reader(tmp_path: Path, buckets: int, rows: int) -> tuple[Any, ...]:
    """Two engines on one shared directory: node 1 (``a``) holds every chain of table ``t`` (``rows`` keys in
    ``buckets`` chains) exclusively and answers copy requests; node 2 (``b``) reads through copies (its status
    knows ``a``'s commits).  Returns a, b, t, the holder's and the reader's meshes, both ConsistentReads' owners:
    ``(a, b, t, holder_mesh, reader_mesh, held, own, cr)``, ``held`` answering, ``cr`` asking."""
    from muheam.cluster.ownership import CATALOG
    from muheam.storage import mvcc

    a, b = open_engines(shared_dir(tmp_path), EngineConfig(segment_size=1 << 22), EngineConfig(segment_size=1 << 22))
    t = a.create_table("t", {"v": "int64"}, buckets=buckets)
    b.reload_catalog()
    tx = a.begin(100)
    for key in range(rows):
        tx.insert("t", key, {"v": key})
    tx.commit()
    holder_mesh, reader_mesh = HandlingMesh(), HandlingMesh()
    holder = Ownership(Locks(), a)  # type: ignore[arg-type]
    for bucket in range(1, buckets + 1):
        holder.held[chain_resource(t.table_id, bucket)] = Mode.EXCLUSIVE
    held = reads.ConsistentReads(holder_mesh, Locks(), holder, a)  # type: ignore[arg-type]
    b.status = lambda x: mvcc.COMMITTED if x in a.committed else b.local_status(x)  # type: ignore[method-assign]
    own = Ownership(CopyLocks(), b)  # type: ignore[arg-type]
    own.held[CATALOG] = holder.held[CATALOG] = Mode.SHARED
    cr = reads.ConsistentReads(reader_mesh, CopyLocks(), own, b)  # type: ignore[arg-type]
    return a, b, t, holder_mesh, reader_mesh, held, own, cr


def scan_op(engine: Engine, t: Any, xid: int) -> tuple[Callable[[], None], list[int]]:
    """An operation that scans every chain of ``t`` in a new transaction ``xid`` of ``engine``, and the keys it
    finds (filled when it runs)."""
    txn, rows = engine.begin(xid, engine.local_snapshot(xid)), list[int]()

    def op() -> None:
        at = 1
        while at <= t.nbuckets:
            chunk, at = engine.scan_from(txn, t, at)
            if chunk is not None:
                rows.extend(chunk[0].tolist())
    return op, rows


def encode_chain(engine: Engine, table_id: int, bucket: int, nbuckets: int) -> bytes:
    from muheam.cluster.ownership import encode_images
    blocks = engine.cache.chain_blocks(table_id, bucket, nbuckets)
    return encode_images([(blk, engine.cache.read(table_id, blk).encode()) for blk in blocks])


def test_a_request_nobody_answers_is_given_up_and_its_chain_takes_the_lock(tmp_path: Path) -> None:
    """A holder that refuses a request (a malformed or, from an older version, an unknown form: the mesh drops
    it) never answers; the statement used to wait for good.  After ``ANSWER_TIMEOUT`` the chains take the lock."""
    from muheam.cluster.ownership import CATALOG

    engine = Engine.open(shared_dir(tmp_path), 2, config=EngineConfig(segment_size=1 << 20))
    t = engine.create_table("t", {"v": "int64"}, buckets=4)
    locks, mesh = CopyLocks(), HandlingMesh()
    own = Ownership(locks, engine)  # type: ignore[arg-type]
    own.held[CATALOG] = Mode.SHARED
    cr = reads.ConsistentReads(mesh, locks, own, engine)  # type: ignore[arg-type]
    ran: list[str] = []
    first = chain_resource(t.table_id, 1)
    assert cr.read(first, lambda: ran.append("op"), ahead=3)
    sent_at = cr.requests[next(iter(cr.requests))].sent
    cr.tick(sent_at + reads.ANSWER_TIMEOUT / 2)
    assert cr.requests and first not in locks.pending
    cr.tick(sent_at + reads.ANSWER_TIMEOUT + 1)
    assert not cr.requests and cr.counters["timed_out"] == 1
    assert first in locks.pending and ran == []  # the lock path runs the operation once granted
    engine.close()


def test_a_copy_named_again_is_verified_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader verifies a copy's pages (``Page.decode``) when it first reads those bytes; the same bytes named
    again and answered True are installed without the checks, and still read right.  Bytes that were kept but
    never read (their chain was ours when the answer came) are verified when they are first read."""
    from muheam.net import wire
    from muheam.storage.page import Page

    a, b, t, holder_mesh, reader_mesh, held, own, cr = holder_and_reader(tmp_path, buckets=2, rows=10)
    checked: list[int] = []  # blocks of copies installed with Page.decode's checks
    real_decode = Page.decode

    def counting(data: Any, *args: Any, **kw: Any) -> Page:
        if kw.get("path") is not None and adopting:
            checked.append(kw["block"])
        return real_decode(data, *args, **kw)

    adopting: list[bool] = []
    real_adopt = b.cache.adopt

    def adopt(table_id: int, images: Any, verified: bool = False) -> None:
        adopting.append(True)
        try:
            real_adopt(table_id, images, verified)
        finally:
            adopting.pop()

    monkeypatch.setattr(Page, "decode", counting)
    monkeypatch.setattr(b.cache, "adopt", adopt)
    first = chain_resource(t.table_id, 1)

    def read_all(xid: int, before_answer: Callable[[], None] = lambda: None) -> list[int]:
        op, rows = scan_op(b, t, xid)
        assert cr.read(first, op, ahead=1)
        _, _, body = reader_mesh.sent.pop()
        held._on_message(wire.PeerMessage(sender=2, epoch=0, stamp=0, kind=reads.KIND, body=body))
        before_answer()
        reader_mesh.handlers[reads.KIND](wire.PeerMessage(sender=1, epoch=0, stamp=0, kind=reads.KIND,
                                                          body=holder_mesh.sent.pop()[2]))
        return sorted(rows)

    chain2 = chain_resource(t.table_id, 2)
    # chain 2 is ours when its first copy comes: kept, not read, so not verified
    read_all(200, lambda: own.held.__setitem__(chain2, Mode.SHARED))  # (what it finds of chain 2: not the point)
    assert len(checked) == 1 and chain2 in cr.kept  # chain 1's page only
    del own.held[chain2]
    b.cache.forget_chain(t.table_id, 2, t.nbuckets)
    checked.clear()
    assert read_all(201) == list(range(10))  # both named, both True: chain 2's bytes are read the first time
    assert held.counters["copies_unchanged"] == 2 and len(checked) == 1
    checked.clear()
    assert read_all(202) == list(range(10))  # the same bytes again: no checks repeated
    assert checked == []
    a.close()
    b.close()
