"""SuperNode authentication in ``fml federate``: a site's key pair, the coordinator's sites file, and the
registration of each site's public key on the SuperLink (Flower's ``flwr supernode register``), whose node
ids become the site bindings the ServerApp enforces (``core.federation.bindings``).

    fml federate keys --site clinic-7 --out keys/           # at the site: keys/clinic-7.key and .pub
    # the coordinator lists each site's public key (sites.yaml: ``clinic-7: keys/clinic-7.pub``)
    fml federate superlink --certificates certs/ --supernode-keys sites.yaml
    fml federate supernode --site clinic-7 --private-key keys/clinic-7.key --certificates certs/ ...

Keys are ECDSA on NIST P-384 in OpenSSH format (what ``flower-supernode --auth-supernode-private-key``
and ``flwr supernode register`` read; ``ssh-keygen -t ecdsa -b 384`` makes the same).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Callable, Mapping, Optional

from core.federation.bindings import Binding, SiteBindings

CURVE_BITS = 384  # Flower accepts any NIST curve; P-384 is the one its documentation uses


def key_file_stem(site: str) -> str:
    """A file name for ``site``'s keys (characters other than letters, digits, ``.``, ``_``, ``-`` -> ``_``)."""
    if not site or not site.strip():
        raise ValueError("--site: a site id is needed")
    return re.sub(r"[^A-Za-z0-9._-]", "_", site).lstrip(".") or "site"


def make_key_pair(site: str, out: Path) -> tuple[Path, Path]:
    """Write ``<out>/<site>.key`` (private, mode 0600) and ``<out>/<site>.pub``; never overwrites (a site
    whose registered key is replaced is locked out until the coordinator registers the new one)."""
    from cryptography.hazmat.primitives import serialization as S
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out).expanduser()
    stem = key_file_stem(site)
    private, public = out / f"{stem}.key", out / f"{stem}.pub"
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing:
        raise ValueError(f"{', '.join(existing)} already exist(s); keys are never overwritten "
                              "(choose another --out, or delete them knowingly)")
    key = ec.generate_private_key(ec.SECP384R1())
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(S.Encoding.PEM, S.PrivateFormat.OpenSSH, S.NoEncryption()))
    line = key.public_key().public_bytes(S.Encoding.OpenSSH, S.PublicFormat.OpenSSH)
    public.write_bytes(line + f" fml-site:{key_file_stem(site)}\n".encode())
    return private, public


def public_key_sha256(path: Path) -> str:
    """SHA-256 of ``path``'s public key as Flower stores it (PEM SubjectPublicKeyInfo); ValueError when the
    file is not an OpenSSH ECDSA public key on a NIST curve."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as S
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = S.load_ssh_public_key(Path(path).read_bytes())
    except OSError as err:
        raise ValueError(f"public key {path}: {err.strerror}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"public key {path}: not an OpenSSH public key (expected 'ecdsa-sha2-nistp384 AAAA...', "
                         "as written by fml federate keys)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _NIST_CURVES:
        raise ValueError(f"public key {path}: Flower needs an ECDSA key on a NIST curve (P-256/384/521)")
    pem = key.public_bytes(S.Encoding.PEM, S.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


_NIST_CURVES = ("secp192r1", "secp224r1", "secp256r1", "secp384r1", "secp521r1")


def check_private_key(path: str) -> Path:
    """The absolute path of a readable OpenSSH ECDSA private key (Flower needs it unencrypted)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as S
    from cryptography.hazmat.primitives.asymmetric import ec

    file = Path(path).expanduser().resolve()
    try:
        key = S.load_ssh_private_key(file.read_bytes(), None)
    except OSError as err:
        raise ValueError(f"--private-key {path}: {err.strerror}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"--private-key {path}: not an unencrypted OpenSSH private key "
                         "(make one with: fml federate keys --site SITE --out DIR)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _NIST_CURVES:
        raise ValueError(f"--private-key {path}: Flower needs an ECDSA key on a NIST curve (P-256/384/521)")
    return file


# --------------------------------------------------------------------------------------------- sites file
def _yaml_rows(path: Path) -> list[tuple[str, str]]:
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data, Mapping) and isinstance(data.get("sites"), Mapping):
        data = data["sites"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping 'site id: public key file'")
    return [(str(site), str(key)) for site, key in data.items()]


def _csv_rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"site", "public_key"} <= set(rows[0]):
        raise ValueError(f"{path}: expected CSV columns site,public_key")
    return [(r["site"].strip(), r["public_key"].strip()) for r in rows]


SITE_FILE_READERS: dict[str, Callable[[Path], list[tuple[str, str]]]] = {
    ".yaml": _yaml_rows, ".yml": _yaml_rows, ".csv": _csv_rows}


def read_site_keys(path: str) -> dict[str, Path]:
    """``site id -> public key file`` from a YAML mapping or a ``site,public_key`` CSV; relative key paths
    are relative to the sites file. Every key is checked: readable, ECDSA on a NIST curve, one per site."""
    file = Path(path).expanduser().resolve()
    reader = SITE_FILE_READERS.get(file.suffix.lower())
    if reader is None:
        raise ValueError(f"--supernode-keys {path}: use a {' or '.join(SITE_FILE_READERS)} file")
    if not file.is_file():
        raise FileNotFoundError(f"--supernode-keys {path}: no such file")
    rows = reader(file)
    if not rows:
        raise ValueError(f"--supernode-keys {path}: no site listed")
    sites = [s for s, _ in rows]
    twice = sorted({s for s in sites if sites.count(s) > 1})
    empty = [k for s, k in rows if not s.strip() or not k.strip()]
    if twice or empty:
        raise ValueError(f"--supernode-keys {path}: " + ("; ".join(
            ([f"site(s) listed twice: {twice}"] if twice else []) + (["an empty site or key entry"] if empty else []))))
    keys = {site: (file.parent / Path(key).expanduser()).resolve() for site, key in rows}
    owner: dict[str, str] = {}
    for site, key in keys.items():
        digest = public_key_sha256(key)
        if digest in owner:
            raise ValueError(f"--supernode-keys {path}: sites {owner[digest]!r} and {site!r} have the same "
                             "public key; each site needs its own")
        owner[digest] = site
    return keys


# --------------------------------------------------------------------------------------------- registration
class RegistrationError(ValueError):
    """A key could not be registered on the SuperLink (a ValueError: ``fml`` prints it as one line)."""


def register_key(key: Path, env: Mapping[str, str], flwr: str, timeout: float = 120.0) -> tuple[Optional[int], str]:
    """``flwr supernode register KEY fml --format json`` on the SuperLink of ``env["FLWR_HOME"]``: the node id
    Flower gives the key, or ``(None, error message)``."""
    proc = subprocess.run([flwr, "supernode", "register", str(key), "fml", "--format", "json"], env=dict(env),
                          capture_output=True, text=True, timeout=timeout)
    text = (proc.stdout + proc.stderr).strip()
    try:
        reply = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return None, text.splitlines()[-1] if text else f"flwr supernode register exited with code {proc.returncode}"
    if reply.get("success") and reply.get("node-id"):
        return int(reply["node-id"]), ""
    return None, str(reply.get("error-message", reply)).strip().splitlines()[-1]


def register_site_keys(site_keys: Mapping[str, Path], env: Mapping[str, str], flwr: str,
                       previous: Optional[SiteBindings] = None, source: str = "") -> SiteBindings:
    """Register every site's key; a key the SuperLink's database already holds keeps the node id recorded
    for it in ``previous`` (the bindings written when it was registered), for the same site only."""
    known = {b.public_key_sha256: b for b in (previous.nodes.values() if previous else ())}
    bindings = []
    for site, key in site_keys.items():
        digest = public_key_sha256(key)
        node_id, error = register_key(key, env, flwr)
        if node_id is None:
            earlier = known.get(digest)
            if "already in use" not in error or earlier is None or earlier.site != site:
                hint = (" (its key is registered already and no earlier binding of this site records its node id: "
                        "start with a fresh --database, or unregister it with flwr supernode unregister)"
                        if "already in use" in error else "")
                raise RegistrationError(f"site {site!r}: registering {key} failed: {error}{hint}")
            node_id = earlier.node_id
        bindings.append(Binding(node_id, site, digest))
    return SiteBindings.of(bindings, source)


# --------------------------------------------------------------------------------------------- the SuperLink side
def bindings_file(database: Optional[str], port: int, given: Optional[str] = None) -> Path:
    """Where the SuperLink's site bindings go: ``given``, else beside ``--database`` (its node ids outlive a
    restart), else ``$FML_HOME/superlink-<port>/site-bindings.json``."""
    if given:
        return Path(given).expanduser().resolve()
    if database:
        return Path(database).expanduser().resolve().with_suffix(".site-bindings.json")
    home = Path(os.environ.get("FML_HOME", Path.home() / ".fml")).expanduser()
    return (home / f"superlink-{port}" / "site-bindings.json").resolve()


def take_previous(path: Path, persistent: bool) -> Optional[SiteBindings]:
    """The bindings of the last start (kept only for a persistent database, whose node ids survive), and the
    file removed: a run submitted before the keys are registered again fails closed, never uses stale ids."""
    previous = None
    if persistent and path.exists():
        try:
            previous = SiteBindings.read(path)
        except ValueError:
            previous = None
    path.unlink(missing_ok=True)
    return previous


def control_address(address: str, port: int) -> str:
    """The SuperLink's Control API as seen from its own machine (a wildcard address -> loopback)."""
    host = "127.0.0.1" if address in ("0.0.0.0", "::", "[::]", "") else address
    return f"{host}:{port}"


def wait_listening(address: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``address`` (HOST:PORT) accepts connections; fail at once if ``proc`` exited."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RegistrationError(f"the SuperLink exited with code {proc.returncode} before its keys were registered")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            time.sleep(0.3)
    raise RegistrationError(f"the SuperLink did not listen on {address} within {timeout:.0f}s")


def registration_hook(site_keys: Mapping[str, Path], bindings_path: Path, address: str, ca: Path,
                      env: Mapping[str, str], previous: Optional[SiteBindings] = None,
                      log: Callable[[str], None] = print) -> Callable[[subprocess.Popen], None]:
    """``on_start`` of the SuperLink: wait for it, register every site key through its Control API
    (``address``, TLS with ``ca``), write the bindings the ServerApp reads, and say what was bound."""
    from pipelines.federate import flower_bin, flower_home

    def register(proc: subprocess.Popen) -> None:
        import shutil
        import tempfile

        wait_listening(address, proc)
        home = tempfile.mkdtemp(prefix="fml-flwr-register-")
        try:
            cli_env = {**env, "FLWR_HOME": flower_home(address, False, str(ca), home=home)}
            bindings = register_site_keys(site_keys, cli_env, flower_bin("flwr"), previous, str(bindings_path))
        finally:
            shutil.rmtree(home, ignore_errors=True)
        bindings.write(bindings_path)
        by_site = sorted(bindings.nodes.values(), key=lambda b: b.site)
        pairs = ", ".join(f"{b.site} -> node {b.node_id}" for b in by_site)
        log(f"fml federate: SuperNode authentication on: {len(bindings.nodes)} site key(s) registered ({pairs}); "
            f"site bindings in {bindings_path}")

    return register
