"""etcd backend for membership, through ``etcd-sdk-python`` (``pyetcd``).

Every call that can fail because etcd is down or slow raises ``EtcdUnavailable`` naming the endpoints, so the
CLI and the node agent can report it in one line and decide what to do (retry, fence, exit).
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar
from urllib.parse import urlparse

import grpc
import pyetcd
import pyetcd.exceptions as etcd_exc
from pyetcd.events import DeleteEvent, PutEvent

from muheam.errors import EtcdUnavailable, NodeIdInUse
from muheam.states import NodeState
from muheam.membership import (HISTORY_KEEP, Lease, Member, MemberEvent, MembershipBackend, WatchCompacted,
                               history_key, recovery_member)

T = TypeVar("T")
_ETCD_ERRORS = (etcd_exc.Etcd3Exception, grpc.RpcError)
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500),
                    ("grpc.min_reconnect_backoff_ms", 2_000)]
"""gRPC's default reconnect backoff grows to minutes: after an etcd restart a lease renewal would keep failing
at once although etcd is back, and the node would fence itself for nothing; so the backoff starts at 100 ms and
stops at 500 ms.  ``min_reconnect_backoff_ms`` is not part of that backoff: gRPC takes it as the least time it
gives one connection attempt (TCP connect and HTTP/2 handshake), and it was 100 ms here too, so an etcd or a
machine busy for 100 ms failed a new client's attempt, and every call of that client failed at once (UNAVAILABLE,
"timed out before receiving SETTINGS frame") while etcd served everyone already connected: twice in CI a
starting node's lease keeper and a ``muheam list`` (``tests/integration/test_etcd_client.py``).  2 s, not gRPC's
default 20 s: an etcd host that drops packets (no refusal) holds an attempt until it times out, and a shorter
one is tried again sooner once etcd is back (a review); each call's own deadline bounds the wait either way."""


class EtcdLease(Lease):
    def __init__(self, backend: "EtcdBackend", lease: Any, ttl: int) -> None:
        self._backend = backend
        self._lease = lease
        self.id = int(lease.id)
        self.ttl = ttl

    def refresh(self) -> int:
        responses = self._backend._call(lambda c: list(c.refresh_lease(self.id)))
        return int(responses[0].TTL) if responses else 0

    def revoke(self) -> None:
        self._backend._call(lambda c: c.revoke_lease(self.id))


class EtcdBackend(MembershipBackend):
    def __init__(self, endpoints: Sequence[str], timeout: float = 2.0) -> None:
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self._last_failure = ""
        eps = []
        for url in self.endpoints:
            parsed = urlparse(url)
            eps.append(pyetcd.Endpoint(parsed.hostname, parsed.port, secure=parsed.scheme == "https", time_retry=0.5,
                                       opts=_CHANNEL_OPTIONS))
        try:
            self._client = pyetcd.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)
        except _ETCD_ERRORS as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> EtcdUnavailable:
        detail = type(exc).__name__
        # pyetcd raises its own exception inside its handler of the gRPC error: gRPC's status and text (e.g.
        # "failed to connect to all addresses; last error: ...") are on the exception it replaced
        rpc = exc if isinstance(exc, grpc.RpcError) else exc.__context__
        if isinstance(rpc, grpc.RpcError) and hasattr(rpc, "code"):
            text = rpc.details() if hasattr(rpc, "details") else ""
            detail = self._last_failure = f"{detail}: {rpc.code()}" + (f": {text}" if text else "")
        elif isinstance(exc, etcd_exc.NoServerAvailableError) and self._last_failure:
            # pyetcd holds a failed endpoint back for ``time_retry`` and fails calls meanwhile without trying
            detail = f"{detail}, held back after {self._last_failure}"
        return EtcdUnavailable(
            f"etcd at {', '.join(self.endpoints)} is unreachable or not answering ({detail}); "
            "start it (muheam cluster up starts an embedded one) or fix etcd_endpoints"
        )

    def _call(self, fn: Callable[[Any], T]) -> T:
        """Run one request, trying every endpoint once before giving up."""
        last: BaseException | None = None
        for _ in range(max(1, len(self.endpoints))):
            try:
                return fn(self._client)
            except _ETCD_ERRORS as exc:
                last = exc
        assert last is not None
        raise self._unavailable(last) from None

    def ping(self) -> bool:
        try:
            self._call(lambda c: c.status())
            return True
        except EtcdUnavailable:
            return False

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a broken channel must not mask the real error
            pass

    # cluster registry ---------------------------------------------------------------------------------------
    def get_cluster(self, cluster: str) -> dict[str, Any] | None:
        value, _ = self._call(lambda c: c.get(f"/muheam/{cluster}/cluster"))
        return None if value is None else dict(json.loads(value))

    def register_cluster(self, cluster: str, identity: dict[str, Any]) -> dict[str, Any]:
        key = f"/muheam/{cluster}/cluster"
        self._call(lambda c: c.put_if_not_exists(key, json.dumps(identity, sort_keys=True)))
        registered = self.get_cluster(cluster)
        assert registered is not None
        return registered

    def get_state(self, cluster: str) -> str | None:
        value, _ = self._call(lambda c: c.get(f"/muheam/{cluster}/state"))
        return None if value is None else value.decode()

    def set_state(self, cluster: str, state: str) -> None:
        self._call(lambda c: c.put(f"/muheam/{cluster}/state", state))

    @contextmanager
    def lock(self, cluster: str, name: str, ttl: int = 10) -> Iterator[None]:
        lock = self._call(lambda c: c.lock(f"muheam/{cluster}/{name}", ttl=ttl))
        if not self._call(lambda c: lock.acquire(timeout=max(ttl, 5))):
            raise EtcdUnavailable(f"could not take the etcd lock {name!r} of cluster {cluster} within {ttl} s; "
                                  "another command holds it; retry when it has finished")
        try:
            yield
        finally:
            try:
                self._call(lambda c: lock.release())
            except EtcdUnavailable:
                pass  # the lock's lease expires by itself

    # members ------------------------------------------------------------------------------------------------
    def grant_lease(self, ttl: int) -> Lease:
        return EtcdLease(self, self._call(lambda c: c.lease(ttl)), ttl)

    def join(self, cluster: str, member: Member, lease: Lease) -> Member:
        key = f"/muheam/{cluster}/members/{member.node_id}"
        epoch_key = f"/muheam/{cluster}/epoch"
        for _ in range(50):
            raw, meta = self._call(lambda c: c.get(epoch_key))
            current = int(raw) if raw is not None else 0
            joined = dataclasses.replace(member, epoch=current + 1, lease_id=lease.id)
            tx = self._client.transactions
            epoch_cmp = tx.version(epoch_key) == 0 if raw is None else tx.mod(epoch_key) == meta.mod_revision
            ok, responses = self._call(
                lambda c: c.transaction(
                    compare=[tx.version(key) == 0, epoch_cmp],
                    success=[tx.put(epoch_key, str(current + 1)), tx.put(key, joined.to_json(), lease=lease.id),
                             tx.put(*self._history_entry(cluster, {"kind": "joined", "node_id": member.node_id,
                                                                   "epoch": current + 1, "at": time.time(),
                                                                   "host": member.host, "pid": member.pid}))],
                    failure=[tx.get(key)],
                )
            )
            if ok:
                return joined
            held = responses[0][0] if responses and responses[0] else None
            if held is not None:
                other = Member.from_json(held[0])
                raise NodeIdInUse(
                    f"node id {member.node_id} is held by a live node (host {other.host}, pid {other.pid}, "
                    f"epoch {other.epoch}); stop it with 'muheam node stop --node-id {member.node_id}' "
                    f"or start this node with another id"
                )
        raise EtcdUnavailable("could not bump the cluster epoch after 50 tries (heavy contention); retry")

    def update_member(self, cluster: str, member: Member, lease: Lease) -> None:
        self._call(lambda c: c.put(f"/muheam/{cluster}/members/{member.node_id}", member.to_json(), lease=lease.id))

    def members(self, cluster: str) -> tuple[list[Member], int]:
        prefix = f"/muheam/{cluster}/members/"
        resp = self._call(lambda c: c.get_prefix_response(prefix))
        out = [Member.from_json(kv.value, kv.mod_revision) for kv in resp.kvs]
        return sorted(out, key=lambda m: m.node_id), int(resp.header.revision)

    def lease_ttl_left(self, lease_id: int) -> int:
        info = self._call(lambda c: c.get_lease_info(lease_id))
        return max(0, int(info.TTL))

    def claim(self, cluster: str, name: str, value: dict[str, Any], lease: Lease) -> dict[str, Any] | None:
        key = f"/muheam/{cluster}/claims/{name}"
        raw = json.dumps(value, sort_keys=True)
        tx = self._client.transactions
        ok, responses = self._call(lambda c: c.transaction(
            compare=[tx.version(key) == 0], success=[tx.put(key, raw, lease=lease.id)], failure=[tx.get(key)]))
        if ok:
            return None
        held = responses[0][0] if responses and responses[0] else None
        return dict(json.loads(held[0])) if held is not None else {}

    def put_recovery(self, cluster: str, node_id: int, info: dict[str, Any]) -> None:
        self._call(lambda c: c.put(f"/muheam/{cluster}/recovery/{node_id}", json.dumps(info, sort_keys=True)))

    def get_recovery(self, cluster: str, node_id: int) -> dict[str, Any] | None:
        raw, _ = self._call(lambda c: c.get(f"/muheam/{cluster}/recovery/{node_id}"))
        return None if raw is None else dict(json.loads(raw))

    def put_replica(self, cluster: str, name: str, info: dict[str, Any]) -> None:
        self._call(lambda c: c.put(f"/muheam/{cluster}/replicas/{name}", json.dumps(info, sort_keys=True)))

    def replicas(self, cluster: str) -> dict[str, dict[str, Any]]:
        prefix = f"/muheam/{cluster}/replicas/"
        resp = self._call(lambda c: c.get_prefix_response(prefix))
        out: dict[str, dict[str, Any]] = {}
        for kv in resp.kvs:
            try:
                out[kv.key.decode()[len(prefix):]] = dict(json.loads(kv.value))
            except (ValueError, UnicodeDecodeError):
                continue  # a value some other tool wrote: not a replica's report
        return out

    @staticmethod
    def _history_entry(cluster: str, event: dict[str, Any]) -> tuple[str, str]:
        return history_key(cluster, event), json.dumps(event, sort_keys=True)

    def add_history(self, cluster: str, event: dict[str, Any]) -> None:
        event = {"at": time.time(), **event}
        self._call(lambda c: c.put(*self._history_entry(cluster, event)))
        if int(event["at"] * 1000) % 50 == 0:  # now and then: drop the oldest beyond what is kept
            resp = self._call(lambda c: c.get_prefix_response(f"/muheam/{cluster}/history/", keys_only=True))
            keys = sorted(kv.key.decode() for kv in resp.kvs)
            for old in keys[:max(0, len(keys) - HISTORY_KEEP)]:
                self._call(lambda c: c.delete(old))

    def history(self, cluster: str, limit: int = 100) -> list[dict[str, Any]]:
        resp = self._call(lambda c: c.get_prefix_response(f"/muheam/{cluster}/history/"))
        out = []
        for kv in sorted(resp.kvs, key=lambda kv: kv.key)[-limit:]:
            try:
                out.append(dict(json.loads(kv.value)))
            except ValueError:
                continue
        return out

    def put_reach(self, cluster: str, node_id: int, hears: Sequence[int], lease: Lease) -> None:
        self._call(lambda c: c.put(f"/muheam/{cluster}/reach/{node_id}", json.dumps(sorted(hears)), lease=lease.id))

    def reach_view(self, cluster: str) -> tuple[list[Member], dict[int, list[int]], int]:
        members, revision = self.members(cluster)
        resp = self._call(lambda c: c.get_prefix_response(f"/muheam/{cluster}/reach/", revision=revision))
        reach: dict[int, list[int]] = {}
        for kv in resp.kvs:
            try:
                node = int(kv.key.decode().rsplit("/", 1)[1])
                heard = json.loads(kv.value)
                if isinstance(heard, list) and all(isinstance(n, int) for n in heard):
                    reach[node] = heard
            except (ValueError, UnicodeDecodeError):
                continue  # a malformed report counts as none: that member is taken to hear everyone
        return members, reach, revision

    def evict(self, cluster: str, losers: Sequence[Member], view: Sequence[Member], by: int) -> bool:
        tx = self._client.transactions
        key = f"/muheam/{cluster}/members/"
        record = json.dumps({"by": by, "reason": "cut off from its peers", "at": time.time()}, sort_keys=True)
        ok, _ = self._call(lambda c: c.transaction(
            compare=[tx.mod(f"{key}{m.node_id}") == m.revision for m in view],
            success=[op for m in losers for op in (tx.delete(f"{key}{m.node_id}"),
                                                   tx.put(f"/muheam/{cluster}/evictions/{m.node_id}", record),
                                                   tx.put(*self._history_entry(cluster, {
                                                       "kind": "evicted", "node_id": m.node_id, "epoch": m.epoch,
                                                       "at": time.time(), "by": by})))],
            failure=[]))
        if ok:
            for m in losers:
                if m.lease_id:
                    try:
                        self._call(lambda c: c.revoke_lease(m.lease_id))
                    except EtcdUnavailable:
                        pass  # its member key is gone already; the lease ends by itself
        return bool(ok)

    def watch_members(self, cluster: str, start_revision: int, poll: float = 0.2) -> Iterator[MemberEvent | None]:
        prefix = f"/muheam/{cluster}/"
        responses: queue.Queue[Any] = queue.Queue()

        def add(c: Any) -> Any:
            try:
                return c.add_watch_prefix_callback(prefix, responses.put, start_revision=start_revision,
                                                   prev_kv=True)
            except etcd_exc.RevisionCompactedError as exc:  # not a lost etcd: retrying the same revision fails
                raise WatchCompacted(start_revision, int(exc.compacted_revision)) from None

        watch_id = self._call(add)
        try:
            while True:
                try:
                    item = responses.get(timeout=poll)
                except queue.Empty:
                    yield None
                    continue
                if isinstance(item, etcd_exc.RevisionCompactedError):  # a watcher that fell behind a compaction
                    raise WatchCompacted(start_revision, int(item.compacted_revision))
                if isinstance(item, BaseException):
                    raise self._unavailable(item)
                for event in item.events:
                    converted = _convert(event)
                    if converted is not None:
                        yield converted
        finally:
            try:
                threading.Thread(target=self._client.cancel_watch, args=(watch_id,), daemon=True).start()
            except Exception:  # noqa: BLE001
                pass


def _convert(event: Any) -> MemberEvent | None:
    revision = int(event.mod_revision)
    key = event.key.decode(errors="replace") if isinstance(event.key, bytes) else str(event.key)
    section = key.rsplit("/", 2)[-2] if key.count("/") >= 2 else ""
    if section == "recovery":
        if not isinstance(event, PutEvent):
            return None
        try:
            info = dict(json.loads(event.value))
            member = recovery_member(int(info["node_id"]), int(info["epoch"]), str(info["state"]))
        except (ValueError, KeyError, TypeError):
            return None
        return MemberEvent(member.state, member, revision, info)
    if section != "members":
        return None
    if isinstance(event, PutEvent):
        try:
            member = Member.from_json(event.value, revision)
        except (ValueError, TypeError):
            return None
        kind = "joined" if event.create_revision == event.mod_revision else "updated"
        return MemberEvent(kind, member, revision)
    if isinstance(event, DeleteEvent):
        try:
            previous = Member.from_json(event.prev_value, revision)
        except ValueError:
            return None
        return MemberEvent("left" if previous.state == NodeState.STOPPING else "expired", previous, revision)
    return None
