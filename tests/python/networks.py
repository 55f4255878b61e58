"""Swarm networks through the Python Docker SDK (a second real client):
create, get, list with filters, the errors SDKs map to exceptions, remove.
Run by tests/networks.rs with DOCKER_HOST pointing at a manager's socket;
exits non-zero on the first failed check."""
import sys

import docker
from docker import errors

client = docker.from_env()

net = client.networks.create(
    "py-net", driver="overlay", labels={"made-by": "sdk"}, attachable=True
)
got = client.networks.get(net.id)
assert got.name == "py-net", got.attrs
assert got.attrs["Driver"] == "overlay", got.attrs
assert got.attrs["Scope"] == "swarm", got.attrs
assert got.attrs["Attachable"] is True, got.attrs
assert got.attrs["Labels"] == {"made-by": "sdk"}, got.attrs
subnet = got.attrs["IPAM"]["Config"][0]["Subnet"]
assert subnet.endswith("/24"), got.attrs

names = [n.name for n in client.networks.list(filters={"label": "made-by=sdk"})]
assert names == ["py-net"], names
names = sorted(n.name for n in client.networks.list(names=["py-net", "ingress"]))
assert names == ["ingress", "py-net"], names

try:
    client.networks.create("py-net", driver="overlay")
    raise AssertionError("a second py-net was created")
except errors.APIError as e:
    assert e.status_code == 409, e
    assert "already exists" in str(e), e

try:
    client.networks.get("no-such-net")
    raise AssertionError("found a network that does not exist")
except errors.NotFound as e:
    assert "not found" in str(e), e

try:
    client.networks.create("py-overlap", driver="overlay",
                           ipam=docker.types.IPAMConfig(pool_configs=[
                               docker.types.IPAMPool(subnet=subnet)]))
    raise AssertionError("an overlapping subnet was accepted")
except errors.APIError as e:
    assert e.status_code == 400, e
    assert "overlaps network py-net" in str(e), e

got.remove()
try:
    client.networks.get("py-net")
    raise AssertionError("py-net is still there after remove")
except errors.NotFound:
    pass
print("python SDK: networks ok")
