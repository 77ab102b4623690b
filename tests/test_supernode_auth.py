"""SuperNode authentication through ``fml federate`` (fast part): site key pairs Flower accepts, the
coordinator's sites file, the node id -> site bindings and the roster refusing a node that is unbound or
claims a site its key is not registered for, key registration, and the one-line refusals of the CLI.
The real SuperLink/SuperNodes on loopback with TLS: ``tests/test_supernode_auth_deployment.py``."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from core.federation.bindings import (SITE_BINDINGS_ENV, Binding, SiteBindings,  # noqa: E402
                                      bindings_from_env)
from pipelines.federate_keys import (RegistrationError, check_private_key, make_key_pair,  # noqa: E402
                                     public_key_sha256, read_site_keys, register_site_keys)
from tests.test_flower_driver import server_identity  # noqa: E402,F401 (the ServerApp identity fixture)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    return {site: make_key_pair(site, out) for site in ("clinic-7", "clinic-8", "clinic-9")}


# ------------------------------------------------------------------------------------------ keys
def test_site_keys_are_the_ones_flower_reads(keys):
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    private, public = keys["clinic-7"]
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600  # the private key is its owner's only
    registered = try_load_public_key(public)  # what `flwr supernode register` sends the SuperLink
    import hashlib

    assert public_key_sha256(public) == hashlib.sha256(registered).hexdigest()
    assert load_ssh_private_key(private.read_bytes(), None).curve.name == "secp384r1"  # flower-supernode's loader
    assert check_private_key(str(private)) == private.resolve()


def test_keys_are_never_overwritten_and_bad_keys_are_named(keys, tmp_path):
    private, _ = keys["clinic-7"]
    with pytest.raises(ValueError, match="never overwritten"):
        make_key_pair("clinic-7", private.parent)
    garbage = tmp_path / "x.key"
    garbage.write_text("not a key")
    with pytest.raises(ValueError, match="not an unencrypted OpenSSH private key"):
        check_private_key(str(garbage))
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        public_key_sha256(garbage)


# ------------------------------------------------------------------------------------------ sites file
def test_sites_file_yaml_and_csv_with_relative_key_paths(keys, tmp_path):
    folder = keys["clinic-7"][1].parent
    (folder / "sites.yaml").write_text("clinic-7: clinic-7.pub\nclinic-8: clinic-8.pub\n")
    (folder / "sites.csv").write_text("site,public_key\nclinic-7,clinic-7.pub\nclinic-8,clinic-8.pub\n")
    expected = {"clinic-7": keys["clinic-7"][1].resolve(), "clinic-8": keys["clinic-8"][1].resolve()}
    assert read_site_keys(str(folder / "sites.yaml")) == expected
    assert read_site_keys(str(folder / "sites.csv")) == expected


@pytest.mark.parametrize("name, text, message", [
    ("twice.csv", "site,public_key\nclinic-7,{a}\nclinic-7,{b}\n", "listed twice: \\['clinic-7'\\]"),
    ("shared.yaml", "clinic-7: {a}\nclinic-8: {a}\n", "'clinic-7' and 'clinic-8' have the same public key"),
    ("missing.yaml", "clinic-7: {a}\nclinic-8: nowhere.pub\n", "nowhere.pub: No such file"),
    ("columns.csv", "name,key\nclinic-7,{a}\n", "expected CSV columns site,public_key"),
    ("sites.txt", "clinic-7 {a}\n", "use a .yaml or .yml or .csv file"),
    ("empty.yaml", "", "no site listed"),
])
def test_bad_sites_files_are_refused_in_one_line(keys, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text.format(a=keys["clinic-7"][1], b=keys["clinic-8"][1]))
    with pytest.raises(ValueError, match=message):
        read_site_keys(str(path))


# ------------------------------------------------------------------------------------------ bindings
def test_bindings_round_trip_and_reasons(tmp_path, monkeypatch):
    bindings = SiteBindings.of([Binding(11, "clinic-7", "aa"), Binding(12, "clinic-8", "bb")], "test")
    path = bindings.write(tmp_path / "b.json")
    assert SiteBindings.read(path) == SiteBindings(bindings.nodes, str(path))
    assert bindings.claim_reason(11, "clinic-7") is None
    assert bindings.claim_reason(12, "clinic-7") == ("node 12 declares site 'clinic-7' but its key is registered "
                                                     "for site 'clinic-8'")
    assert "node 13 has no site binding" in bindings.claim_reason(13, "clinic-7")
    with pytest.raises(ValueError, match="bound to more than one key"):
        SiteBindings.of([Binding(1, "clinic-7"), Binding(2, "clinic-7")])
    monkeypatch.delenv(SITE_BINDINGS_ENV, raising=False)
    assert bindings_from_env() is None
    monkeypatch.setenv(SITE_BINDINGS_ENV, str(path))
    assert bindings_from_env().site_of(12) == "clinic-8"
    monkeypatch.setenv(SITE_BINDINGS_ENV, str(tmp_path / "gone.json"))
    with pytest.raises(FileNotFoundError, match="no node is admitted without them"):  # fails closed
        bindings_from_env()


def test_the_roster_refuses_unbound_nodes_unasked_and_nodes_claiming_another_site(server_identity):
    """In-memory grid, real ClientApps: node 1000 declares train-001 but its key is bound to train-000 (it is
    described first, so without bindings it would take train-001), node 1001 is the real train-001, node 1002
    (train-002) is bound to no site; only train-001 may join, and train-002 is never sent anything."""
    from flwr.app import Context, RecordDict

    from core.federation.client import make_client_app
    from core.federation.driver import FederationDriver
    from pipelines.federate_node import load_site
    from tests.test_flower_driver import MemoryGrid, make_run

    run = make_run(**{"fed.rounds": 1, "fed.clients_per_round": 1, "flower.min_available_clients": 1})
    grid = MemoryGrid(make_client_app(load_site), ["train-001", "train-001", "train-002"])
    bindings = SiteBindings.of([Binding(1000, "train-000"), Binding(1001, "train-001")], "test")
    result = FederationDriver(grid, Context(1, 0, {}, RecordDict(), {}), run, bindings=bindings).run_all()
    refused = {e["node"]: e for e in result.events if e["kind"] == "node_refused"}
    assert refused[1000]["site"] == "train-001" and refused[1000]["bound_site"] == "train-000"
    assert "declares site 'train-001' but its key is registered for site 'train-000'" in refused[1000]["reason"]
    assert "no site binding" in refused[1002]["reason"] and "train-002" not in grid.asked  # never asked
    joined = [(e["node"], e["site"]) for e in result.events if e["kind"] == "node_joined"]
    assert joined == [(1001, "train-001")]
    assert result.rounds[0].accepted == ["train-001"] and result.rounds[0].applied


# ------------------------------------------------------------------------------------------ registration
def _fake_flwr(tmp_path: Path, replies: dict[str, dict]) -> str:
    """A stand-in for ``flwr supernode register KEY ...``: prints the JSON Flower 1.42 prints for KEY."""
    script = tmp_path / "flwr"
    script.write_text("#!/usr/bin/env python3\nimport json, sys\n"
                      f"replies = {json.dumps({k: json.dumps(v) for k, v in replies.items()})}\n"
                      "print(replies[sys.argv[3]])\n")
    script.chmod(0o755)
    return str(script)


def test_registration_binds_node_ids_and_reuses_a_persistent_databases_ids_for_the_same_site(keys, tmp_path):
    a, b = keys["clinic-7"][1], keys["clinic-8"][1]
    in_use = {"success": False, "error-message": "Using SuperLink: fml\n\n[code: 23] Public key already in use."}
    flwr = _fake_flwr(tmp_path, {str(a): {"success": True, "node-id": 41}, str(b): in_use})
    with pytest.raises(RegistrationError, match="site 'clinic-8'.*Public key already in use.*fresh --database"):
        register_site_keys({"clinic-7": a, "clinic-8": b}, os.environ, flwr)
    earlier = SiteBindings.of([Binding(42, "clinic-8", public_key_sha256(b))])
    bound = register_site_keys({"clinic-7": a, "clinic-8": b}, os.environ, flwr, earlier)
    assert {n: x.site for n, x in bound.nodes.items()} == {41: "clinic-7", 42: "clinic-8"}
    moved = SiteBindings.of([Binding(42, "clinic-9", public_key_sha256(b))])  # the key once served another site
    with pytest.raises(RegistrationError, match="clinic-8"):
        register_site_keys({"clinic-7": a, "clinic-8": b}, os.environ, flwr, moved)


# ------------------------------------------------------------------------------------------ CLI
def test_authentication_without_tls_is_refused_in_one_line(keys, tmp_path, capsys):
    from pipelines.federate import main

    (tmp_path / "sites.yaml").write_text(f"clinic-7: {keys['clinic-7'][1]}\n")
    assert main(["superlink", "--insecure", "--supernode-keys", str(tmp_path / "sites.yaml")]) == 2
    assert main(["supernode", "--insecure", "--site", "clinic-7", "--private-key", str(keys["clinic-7"][0])]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("needs TLS" in line and "--insecure" in line for line in lines)


def test_the_flower_commands_carry_the_authentication_flags(keys):
    from pipelines.federate import superlink_command, supernode_command

    assert "--enable-supernode-auth" in superlink_command("127.0.0.1", [], supernode_auth=True)
    assert "--enable-supernode-auth" not in superlink_command("127.0.0.1", [])
    cmd = supernode_command("127.0.0.1:9092", "clinic-7", [], private_key=str(keys["clinic-7"][0]))
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(keys["clinic-7"][0])
