"""A three-member etcd cluster for the tests and `yogurt demo --nodes 2`: Debian's etcd 3.4 (`etcd-server`,
unpacked into the checkout's cache by packaging/fetch-etcd.sh, not installed; see `find_etcd`), free
ports, data in a temporary dir, optionally TLS with client certificates.  Members can be killed,
restarted, stopped two at a time (quorum lost) and the store compacted.  Every wait is bounded and
`close` leaves no process or file behind.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cni_yogurt.cluster.client import Client
from cni_yogurt.cluster.config import Endpoint
from cni_yogurt.cluster.errors import StoreError

START_TIMEOUT = 20.0
REPO = Path(__file__).resolve().parents[2]  # a checkout's (editable install): its .cache/etcd
MIN_VERSION = (3, 4)  # the v3 JSON gateway under /v3/


def find_etcd() -> tuple[str, str]:
    """The etcd the lab runs, and where it came from: $YOGURT_ETCD (a user's own etcd >= 3.4), else
    the one packaging/fetch-etcd.sh unpacked (`make cluster` fetches it), else one on PATH."""
    if own := os.environ.get("YOGURT_ETCD"):
        return own, "YOGURT_ETCD"
    cache = Path(os.environ.get("YOGURT_ETCD_CACHE") or REPO / ".cache" / "etcd")
    if (cache / ".complete").exists():
        return str(cache / "usr" / "bin" / "etcd"), "packaging/fetch-etcd.sh"
    if on_path := shutil.which("etcd"):
        return on_path, "PATH"
    return "", "nowhere"  # EtcdLab says what to do; tests without a lab (test_nodelab.py) still run


@functools.cache
def etcd_version(etcd: str) -> tuple[int, ...]:
    """`etcd --version`'s first line, "etcd Version: 3.4.23", as (3, 4, 23); a binary that is not an
    etcd >= 3.4 is refused here rather than as a lab that never becomes healthy."""
    try:
        argv = [etcd, "--version"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
        version = tuple(int(p) for p in out.split("Version:", 1)[1].split()[0].split("."))
    except (OSError, subprocess.SubprocessError, IndexError, ValueError) as e:
        raise RuntimeError(f"{etcd} is not a working etcd: {e}") from e
    if version < MIN_VERSION:
        raise RuntimeError(f"{etcd} is etcd {'.'.join(map(str, version))}; the lab needs >= 3.4")
    return version


ETCD, ETCD_FROM = find_etcd()


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class TLSFiles:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    rogue_ca: str  # a CA the cluster does not know
    rogue_cert: str  # a client certificate signed by it
    rogue_key: str


def make_tls(directory: Path, host: str = "127.0.0.1") -> TLSFiles:
    """A CA, a server certificate for `host` (and localhost), a client certificate; and a rogue CA with
    its own client."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:  # the one-file binary leaves it out (packaging/yogurt.spec)
        raise RuntimeError("a TLS lab needs the cryptography package (python3-cryptography)") from None

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
        crt, pem = directory / f"{stem}.crt", directory / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        pem.chmod(0o600)
        return str(crt), str(pem)

    def ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def leaf(
        cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], server: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer[0].subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]
                ),
                critical=False,
            )
        return builder.sign(issuer[1], hashes.SHA256()), key

    the_ca, rogue = ca("yogurt-lab-ca"), ca("rogue-ca")
    ca_crt, _ = write("ca", *the_ca)
    rogue_crt, _ = write("rogue-ca", *rogue)
    srv = write("server", *leaf("etcd", the_ca, server=True))
    cli = write("client", *leaf("node-a", the_ca, server=False))
    bad = write("rogue-client", *leaf("node-x", rogue, server=False))
    return TLSFiles(ca_crt, *srv, *cli, rogue_crt, *bad)


class EtcdLab:
    """`netns`/`host`: run the members inside that network namespace, serving clients on `host` (the
    node lab's hub, on its underlay: tests/cluster/test_cluster_lines.py); the lab's own clients
    then connect from inside it too."""

    def __init__(
        self,
        tls: bool = False,
        size: int = 3,
        *,
        netns: str = "",
        host: str = "127.0.0.1",
        etcd: str | None = None,
    ) -> None:
        self.etcd = ETCD if etcd is None else etcd
        if not self.etcd:
            raise RuntimeError("no etcd: run packaging/fetch-etcd.sh (make cluster does) or set YOGURT_ETCD")
        if not os.access(self.etcd, os.X_OK):
            raise RuntimeError(f"{self.etcd} (from {ETCD_FROM}) is not executable")
        etcd_version(self.etcd)
        self.dir = Path(tempfile.mkdtemp(prefix="yogurt-etcd-"))
        self.tls = make_tls(self.dir, host) if tls else None
        self.scheme = "https" if tls else "http"
        ports = free_ports(2 * size)
        self.client_ports, self.peer_ports = ports[:size], ports[size:]
        self.names = [f"m{i}" for i in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.started = [False] * size
        self.netns, self.host = netns, host

    @property
    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.scheme, self.host, p) for p in self.client_ports]

    def endpoint_urls(self) -> list[str]:
        return [str(e) for e in self.endpoints]

    def client(self, *, timeout: float = 8.0, **tls: str) -> Client:
        """A client of every member; with the lab's client certificate unless told otherwise."""
        if self.tls and not tls:
            tls = {"ca_file": self.tls.ca, "cert_file": self.tls.client_cert, "key_file": self.tls.client_key}
        return Client(
            self.endpoints, timeout=timeout, netns=f"/run/netns/{self.netns}" if self.netns else "", **tls
        )

    def _args(self, i: int) -> list[str]:
        peers = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        url = f"{self.scheme}://{self.host}:{self.client_ports[i]}"
        args = [
            *(["ip", "netns", "exec", self.netns] if self.netns else []),
            self.etcd,
            f"--name={self.names[i]}",
            f"--data-dir={self.dir / self.names[i]}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{self.peer_ports[i]}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peer_ports[i]}",
            f"--initial-cluster={peers}",
            "--initial-cluster-token=yogurt-lab",
            f"--initial-cluster-state={'existing' if self.started[i] else 'new'}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        if self.tls:
            args += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        return args

    def start_member(self, i: int) -> None:
        assert self.procs[i] is None, f"member {i} runs already"
        log = open(self.dir / f"{self.names[i]}.log", "ab")  # noqa: SIM115 - the child keeps it
        with log:
            self.procs[i] = subprocess.Popen(
                self._args(i), stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.started[i] = True

    def start(self) -> EtcdLab:
        for i in range(len(self.names)):
            self.start_member(i)
        self.wait_healthy()
        return self

    def wait_healthy(self, members: list[int] | None = None, timeout: float = START_TIMEOUT) -> None:
        """Until every member (or those given) answers and the cluster has a leader."""
        client = self.client(timeout=1.0)
        deadline = time.monotonic() + timeout
        todo = list(range(len(self.names))) if members is None else members
        last = ""
        while time.monotonic() < deadline:
            try:
                for i in todo:
                    st = client.status(self.endpoints[i])
                    if not int(st.get("leader", 0)):
                        raise StoreError(11, "no leader yet")
                client.put(b"/lab/health", b"ok")  # a write goes through: a quorum is there
                return
            except StoreError as e:
                last = f"{e.msg} {e.details}"
                time.sleep(0.1)
        raise TimeoutError(f"etcd lab not healthy in {timeout} s: {last}; logs in {self.dir}")

    def kill(self, i: int) -> None:
        """SIGKILL member i (its data stays: restart brings it back)."""
        proc = self.procs[i]
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            self.procs[i] = None

    def restart(self, i: int) -> None:
        self.kill(i)
        self.start_member(i)

    def leader(self) -> int:
        """The index of the current leader."""
        st = self.client(timeout=2.0).status()
        ids = {}
        for i, ep in enumerate(self.endpoints):
            if self.procs[i] is not None:
                with contextlib.suppress(StoreError):
                    ids[int(self.client(timeout=1.0).status(ep)["header"]["member_id"])] = i
        return ids[int(st["leader"])]

    def compact(self) -> int:
        """Compact the store up to its current revision; that revision."""
        client = self.client()
        rev = client.put(b"/lab/compact", b"x")
        client.compact(rev)
        return rev

    def close(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)
        if os.environ.get("YOGURT_KEEP_ETCD_LAB"):
            return
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
