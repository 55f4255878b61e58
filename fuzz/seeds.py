#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/: a few valid inputs per
target, so the fuzzer starts past the first checks. Run once; the files are
committed. Needs the `cryptography` package (Debian: python3-cryptography)."""

import base64
import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = bytes([7] * 32)  # the key fuzz_targets/sealed_record.rs opens with


def base36(data, width):
    n, digits = int.from_bytes(data, "big"), ""
    while n:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return digits.rjust(width, "0")


def seal(key, place, plain):
    nonce = os.urandom(12)
    return b"\x01" + nonce + ChaCha20Poly1305(key).encrypt(nonce, plain, place.encode())


def write(target, name, data):
    os.makedirs(os.path.join(HERE, "corpus", target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(HERE, "corpus", target, name), "wb") as f:
        f.write(data)


def frame(body):
    return struct.pack(">I", len(body)) + body


digest = hashlib.sha256(b"apiary fuzz CA").digest()
token = f"SWMTKN-1-{base36(digest, 50)}-{base36(os.urandom(16), 25)}"
unlock = "SWMKEY-1-" + base64.b64encode(KEY).decode().rstrip("=")

write("join_token", "valid", token)
write("join_token", "padded", f"  {token}\n")
write("join_token", "zero-digest", f"SWMTKN-1-{'0' * 50}-{'z' * 25}")
write("join_token", "unlock-key", unlock)

write("unlock_key", "valid", unlock)
write("unlock_key", "padded-base64", unlock + "=\n")
write("unlock_key", "join-token", token)

description = {
    "hostname": "pi-1",
    "platform": {"os": "linux", "architecture": "aarch64"},
    "nano_cpus": 4000000000,
    "memory_bytes": 4 << 30,
    "engine_version": "apiary",
}
heartbeat = json.dumps(
    {"Heartbeat": {"node_id": "a" * 25, "role": "worker", "description": description}}
).encode()
join = json.dumps(
    {
        "Join": {
            "secret": "b" * 25,
            "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n",
            "description": description,
            "advertise_addr": "10.0.0.2:4789",
            "availability": "active",
            "observed_ip": None,
        }
    }
).encode()
forwarded = json.dumps(
    {
        "Forwarded": {
            "caller": {"node_id": "c" * 25, "role": "manager", "ip": "10.0.0.3"},
            "inner": {"RaftJoin": {"node_id": "c" * 25, "raft_id": 7, "addr": "10.0.0.3:4789"}},
        }
    }
).encode()
reply = json.dumps(
    {
        "Heartbeat": {
            "period_ms": 5000,
            "desired_role": "manager",
            "raft_member": True,
            "managers": ["10.0.0.1:4789"],
            "renew": False,
        }
    }
).encode()
write("rpc_frame", "heartbeat.json", heartbeat)
write("rpc_frame", "join.json", join)
write("rpc_frame", "forwarded.json", forwarded)
# A request frame then a response frame (status byte + reply), as on a stream.
write("rpc_frame", "frames", frame(b'"GetCa"') + frame(b"\x00" + reply))
write("rpc_frame", "error-frame", frame(b"\x01the leader is gone"))

record = seal(KEY, "log/1", b'{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1}}')
write("sealed_record", "record", record)
write("sealed_record", "keyfile-plain.json", json.dumps({"mode": "plain", "dek": base64.b64encode(os.urandom(32)).decode()}))
dek = os.urandom(32)
tls = b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"
old = bytes([8] * 32)
write(
    "sealed_record",
    "keyfile-locked.json",
    json.dumps(
        {
            "mode": "locked",
            "dek": base64.b64encode(seal(KEY, "dek", dek)).decode(),
            "tls_key": base64.b64encode(seal(KEY, "tls-key", tls)).decode(),
            "previous": {
                "dek": base64.b64encode(seal(old, "dek", dek)).decode(),
                "tls_key": base64.b64encode(seal(old, "tls-key", tls)).decode(),
                "until": 1700000000,
            },
        }
    ),
)


def chunk(b):
    return struct.pack("<Q", len(b)) + b


log_id = {"leader_id": {"term": 2, "node_id": 11}, "index": 42}
meta = json.dumps(
    {
        "last_log_id": log_id,
        "last_membership": {
            "log_id": log_id,
            "membership": {"configs": [[11]], "nodes": {"11": {"addr": "10.0.0.1:4789"}}},
        },
        "snapshot_id": "2-11-42",
    }
).encode()
rows = [(b"cluster", b'{"id":"x"}'), (b"node/" + b"a" * 25, b'{"id":"a"}')]
blob = b"apiary-snapshot-1\n" + chunk(meta) + struct.pack("<Q", len(rows))
for k, v in rows:
    blob += chunk(k) + chunk(v)
write("snapshot", "two-rows", blob)
write("snapshot", "empty", b"apiary-snapshot-1\n" + chunk(meta) + struct.pack("<Q", 0))
